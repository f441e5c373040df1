"""nnU-Net v2's own ``nnUNetv2_train`` / ``nnUNetv2_predict`` entry points with one change: how the trainer class is found.

Usage: ``python benchmarks/peers/nnunet_cli.py train|predict <nnUNetv2_train / nnUNetv2_predict arguments>``.

Why not the console scripts: nnU-Net looks a trainer up by importing every module under
``nnunetv2/training/nnUNetTrainer`` (``recursive_find_trainer_class_by_name``), among them its Primus trainers, which
import ``timm`` and so ``torchvision``. The only torchvision wheels on this machine are CUDA builds, which cannot load
beside the CPU build of torch (``RuntimeError: operator torchvision::nms does not exist``), so the stock commands fail
before training. Here the lookup knows the two trainers the benchmarks use -- nnU-Net's default ``nnUNetTrainer`` and
``nnunet_trainers/nnUNetTrainerWallClock`` -- and defers to nnU-Net's own search for any other name; argument parsing,
defaults, threads, training and prediction are nnU-Net's code, unchanged.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "nnunet_trainers"))


def find_trainer_class(trainer_name: str):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities import find_objects
    from nnUNetTrainerWallClock import nnUNetTrainerWallClock

    known = {"nnUNetTrainer": nnUNetTrainer, "nnUNetTrainerWallClock": nnUNetTrainerWallClock}
    return known[trainer_name] if trainer_name in known else find_objects.recursive_find_trainer_class_by_name(trainer_name)


def use_known_trainer_lookup() -> None:
    """Make nnU-Net's training and prediction code find trainers through :func:`find_trainer_class`."""
    from nnunetv2.inference import predict_from_raw_data
    from nnunetv2.run import run_training

    run_training.recursive_find_trainer_class_by_name = find_trainer_class
    predict_from_raw_data.recursive_find_trainer_class_by_name = find_trainer_class


def main() -> None:
    from nnunetv2.inference import predict_from_raw_data
    from nnunetv2.run import run_training

    use_known_trainer_lookup()
    command = sys.argv.pop(1) if len(sys.argv) > 1 else ""
    entry = {"train": run_training.run_training_entry, "predict": predict_from_raw_data.predict_entry_point}.get(command)
    if entry is None:
        raise SystemExit("usage: nnunet_cli.py train|predict <nnUNetv2_train / nnUNetv2_predict arguments>")
    entry()


if __name__ == "__main__":
    main()
