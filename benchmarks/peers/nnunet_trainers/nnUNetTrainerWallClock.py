"""nnU-Net v2's default trainer with a wall-clock budget: the peer of ``benchmarks/hippocampus.py`` (benchmark only).

nnU-Net's own training and prediction entry points run it by name through ``benchmarks/peers/nnunet_cli.py``
(``nnunet_cli.py train 4 3d_fullres 0 -tr nnUNetTrainerWallClock -device cpu``). Everything of
``nnUNetTrainer`` is kept (plans, network, deep supervision, Dice+CE loss, SGD with Nesterov momentum 0.99, lr 1e-2,
data augmentation, 250 training + 50 pseudo-Dice validation iterations per epoch, its data-augmentation workers)
except three things, each needed to give both tools the same budget:

* training stops at ``UNETZOO_PEER_BUDGET_SECONDS`` of wall-clock time counted from ``on_train_start`` (data loader
  start and unpacking included), checked after every iteration; the epoch that is cut short ends with one
  validation iteration (nnU-Net's logger needs one) and the usual ``checkpoint_final.pth``;
* the polynomial learning rate ``lr0 * (1 - t / budget) ** 0.9`` runs on elapsed time, per iteration, instead of on
  the epoch index out of 1000 (the same replacement ``benchmarks/hippocampus.py`` makes for our bundle), so the run
  ends with a decayed rate whatever the machine speed;
* ``perform_actual_validation`` (the sliding-window prediction of the validation fold after training) is skipped:
  the benchmark predicts those cases with ``nnUNetv2_predict`` and times that separately.

It writes ``benchmark_budget.json`` (iterations, epochs, seconds) next to the checkpoint.
"""

import json
import os
import time
from os.path import join

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerWallClock(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # nnU-Net records its __init__ arguments by name (checkpoints keep them): the signature must be its own.
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.budget_seconds = float(os.environ.get("UNETZOO_PEER_BUDGET_SECONDS", "900"))
        self.t_start = None
        self.iterations_done = 0

    def elapsed(self) -> float:
        return 0.0 if self.t_start is None else time.perf_counter() - self.t_start

    def out_of_time(self) -> bool:
        return self.elapsed() >= self.budget_seconds

    def on_train_start(self):
        self.t_start = time.perf_counter()
        super().on_train_start()

    def train_step(self, batch: dict) -> dict:
        lr = self.initial_lr * max(0.0, 1.0 - self.elapsed() / self.budget_seconds) ** 0.9
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.iterations_done += 1
        return super().train_step(batch)

    def run_training(self):
        # nnUNetTrainer.run_training, with the budget checked after every iteration.
        self.on_train_start()
        while self.current_epoch < self.num_epochs:
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = []
            for _ in range(self.num_iterations_per_epoch):
                train_outputs.append(self.train_step(next(self.dataloader_train)))
                if self.out_of_time():
                    break
            self.on_train_epoch_end(train_outputs)
            stopping = self.out_of_time()
            with torch.no_grad():
                self.on_validation_epoch_start()
                val_outputs = [self.validation_step(next(self.dataloader_val))
                               for _ in range(1 if stopping else self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val_outputs)
            self.on_epoch_end()
            if stopping:
                break
        train_seconds = self.elapsed()
        self.on_train_end()
        record = {"budget_seconds": self.budget_seconds, "train_seconds": round(train_seconds, 1),
                  "iterations": self.iterations_done, "epochs": self.current_epoch,
                  "batch_size": self.batch_size, "patch_size": list(self.configuration_manager.patch_size),
                  "torch_threads": torch.get_num_threads()}
        with open(join(self.output_folder, "benchmark_budget.json"), "w") as f:
            json.dump(record, f, indent=2)

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("benchmark: final validation skipped; benchmarks/peers/ predicts the validation cases "
                               "with nnUNetv2_predict and times it")
