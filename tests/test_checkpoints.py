"""Atomic checkpoints, clear errors for damaged ones, and bitwise resume of a killed training.

The resume test runs a tiny MONAI bundle config (written here, same handler pattern as the bundles) with
``python -m monai.bundle run``: an uninterrupted run, a run that SIGKILLs itself in the middle of epoch 3 (after the
epoch-2 resume checkpoint), then ``--resume true`` on the killed run's folder. The final weights must be bitwise
equal to the uninterrupted run's (CPU, one thread, deterministic data with random shuffling and random flip/noise
augmentation, Adam, StepLR). A control run that resumes without restoring the RNG state must differ, which shows
the comparison is sensitive to what the resume restores.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer
from monai.handlers import CheckpointSaver
from monai.transforms import Compose, RandFlipd, RandGaussianNoised

import monai_unetzoo.checkpoints as ck
from monai_unetzoo.checkpoints import (
    AtomicCheckpointSaver,
    BestMetricState,
    CorruptCheckpointError,
    IncompatibleCheckpointError,
    ResumeCheckpointLoader,
    ResumeCheckpointSaver,
    RNGStateKeeper,
    load_checkpoint_file,
    resolve_resume_path,
    save_checkpoint_atomically,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- atomic writing
def test_save_atomically_roundtrip_and_no_temporary_left(tmp_path):
    path = tmp_path / "sub" / "ckpt.pt"
    state = {"w": torch.arange(6.0).reshape(2, 3), "n": 3, "name": "x"}
    assert save_checkpoint_atomically(state, path) == path
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["w"], state["w"]) and loaded["n"] == 3 and loaded["name"] == "x"
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pt"]
    # umask-governed permissions (tempfile's 0600 is what MONAI avoids): group-readable under the usual umask.
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_failed_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint_atomically({"w": torch.ones(3)}, path)
    before = path.read_bytes()
    real_save = torch.save

    def crash_mid_write(obj, f, **kw):  # write part of the data, then die as a killed process would
        real_save(obj, f, **kw)
        f.truncate(10)
        raise KeyboardInterrupt("simulated kill during torch.save")

    monkeypatch.setattr(ck.torch, "save", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint_atomically({"w": torch.zeros(1000)}, path)
    assert path.read_bytes() == before
    assert torch.equal(load_checkpoint_file(path)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_stale_temporary_of_killed_process_is_removed(tmp_path):
    path = tmp_path / "resume.pt"
    stale = tmp_path / "resume.pt.tmp-999999"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / "model.pt.tmp-999999"  # belongs to another file: left alone
    other.write_bytes(b"x")
    save_checkpoint_atomically({"a": torch.zeros(1)}, path)
    assert not stale.exists() and other.exists()


# ------------------------------------------------------------------------------------------- loading, errors
def _write_reference_ckpt(path: Path) -> bytes:
    torch.save({"network": {"w": torch.randn(64, 64)}, "trainer": {"iteration": 4}}, path)
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "zero_filled_tail"])
def test_damaged_checkpoint_gives_clear_error(tmp_path, damage):
    path = tmp_path / "resume.pt"
    data = _write_reference_ckpt(path)
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(b"this is not a checkpoint " * 20)
    else:  # e.g. a file system that lost the end of the file after a crash
        path.write_bytes(data[: len(data) - 200] + b"\0" * 200)
    with pytest.raises(CorruptCheckpointError) as err:
        load_checkpoint_file(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: truncated or corrupt checkpoint: ")
    reason = "the file is empty (0 bytes)" if damage == "empty" else "not a PyTorch zip archive"
    assert reason in msg


def test_checkpoint_with_arbitrary_objects_is_refused_by_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"network": {"w": torch.ones(1)}, "obj": Path("/etc/passwd")}, path)
    with pytest.raises(CorruptCheckpointError, match="weights_only=True"):
        load_checkpoint_file(path)


def test_loader_uses_weights_only(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    torch.save({"a": torch.ones(1)}, path)
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ck.torch, "load", spy)
    load_checkpoint_file(path)
    assert calls == [True]


def test_missing_checkpoint_and_resume_modes(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint_file(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match=r"resume\.pt: resume was requested"):
        resolve_resume_path(True, tmp_path)
    with pytest.raises(FileNotFoundError, match=r"resume\.pt: resume was requested"):
        resolve_resume_path("true", tmp_path)  # as it arrives from the command line
    assert resolve_resume_path("auto", tmp_path) is None
    assert resolve_resume_path(False, tmp_path) is None and resolve_resume_path("false", tmp_path) is None
    (tmp_path / "resume.pt").write_bytes(b"x")
    assert resolve_resume_path("auto", tmp_path) == tmp_path / "resume.pt"
    assert resolve_resume_path(str(tmp_path / "resume.pt")) == tmp_path / "resume.pt"


# ------------------------------------------------------------------------------------- in-process trainers
def _tiny_trainer(max_epochs: int, seed: int = 0, handlers=()):
    """A SupervisedTrainer on 4 fixed random 1x8x8 items; ``seed`` sets the initial weights of the 1x1 conv net."""
    g = torch.Generator().manual_seed(100)  # the same data for every seed
    data = [{"image": torch.randn(1, 8, 8, generator=g), "label": (torch.rand(1, 8, 8, generator=g) > 0.5).float()}
            for _ in range(4)]
    torch.manual_seed(seed)
    net = torch.nn.Conv2d(1, 2, 1)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    loader = torch.utils.data.DataLoader(data, batch_size=2, shuffle=False)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=max_epochs, train_data_loader=loader, network=net, optimizer=opt,
        loss_function=lambda p, y: torch.nn.functional.cross_entropy(p, y[:, 0].long()), train_handlers=list(handlers),
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: sched.step())
    return trainer, net, opt, sched


def test_resume_in_process_matches_uninterrupted(tmp_path):
    ref, ref_net, _, _ = _tiny_trainer(4)
    ref.run()

    trainer, net, opt, sched = _tiny_trainer(4)
    state = {"network": net, "optimizer": opt, "lr_scheduler": sched}
    saver = ResumeCheckpointSaver(tmp_path, state)
    saver.attach(trainer)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda e: e.terminate())
    trainer.run()
    assert trainer.state.epoch == 2
    ckpt = load_checkpoint_file(tmp_path / "resume.pt")
    assert ckpt["trainer"]["iteration"] == 4 and ckpt["trainer"]["epoch_length"] == 2
    assert ckpt["lr_scheduler"]["last_epoch"] == 2

    # a fresh process would build everything anew: different initial weights (seed 1) must be overwritten
    trainer2, net2, opt2, sched2 = _tiny_trainer(4, seed=1)
    epochs_run = []
    trainer2.add_event_handler(Events.EPOCH_STARTED, lambda e: epochs_run.append(e.state.epoch))
    loader = ResumeCheckpointLoader({"network": net2, "optimizer": opt2, "lr_scheduler": sched2}, resume=True,
                                    save_dir=tmp_path)
    loader.attach(trainer2)
    trainer2.run()
    assert epochs_run == [3, 4]  # continued, not restarted
    assert trainer2.state.iteration == 8
    assert sched2.last_epoch == 4 and opt2.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**4)
    for (k, a), b in zip(ref_net.state_dict().items(), net2.state_dict().values()):
        assert torch.equal(a, b), k


def test_corrupt_resume_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    trainer, net, opt, sched = _tiny_trainer(2)
    ResumeCheckpointSaver(tmp_path, {"network": net}).attach(trainer)
    trainer.run()
    path = tmp_path / "resume.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])

    trainer2, net2, *_ = _tiny_trainer(4)
    started = []
    trainer2.add_event_handler(Events.ITERATION_STARTED, lambda e: started.append(1))
    ResumeCheckpointLoader({"network": net2}, resume=True, save_dir=tmp_path).attach(trainer2)
    with pytest.raises(CorruptCheckpointError, match="truncated or corrupt checkpoint"):
        trainer2.run()
    assert not started


def test_checkpoint_lacking_an_object_is_an_error(tmp_path):
    trainer, net, opt, sched = _tiny_trainer(1)
    ResumeCheckpointSaver(tmp_path, {"network": net}).attach(trainer)
    trainer.run()
    trainer2, net2, opt2, _ = _tiny_trainer(2)
    ResumeCheckpointLoader({"network": net2, "optimizer": opt2}, resume=True, save_dir=tmp_path).attach(trainer2)
    with pytest.raises(IncompatibleCheckpointError, match=r"lacks \['optimizer'\]"):
        trainer2.run()
    # and one whose tensors do not fit the network
    trainer3 = _tiny_trainer(2)[0]
    ResumeCheckpointLoader({"network": torch.nn.Conv2d(1, 3, 1)}, resume=True, save_dir=tmp_path).attach(trainer3)
    with pytest.raises(IncompatibleCheckpointError, match="does not fit"):
        trainer3.run()


def _engine_with_metric(values):
    """An engine whose EPOCH_COMPLETED sets metrics['dice'] from ``values`` and tracks best like MONAI's Workflow."""
    engine = Engine(lambda e, b: None)
    engine.state.best_metric, engine.state.best_metric_epoch = -1, -1

    @engine.on(Events.EPOCH_COMPLETED)
    def _(e):
        e.state.metrics["dice"] = values[e.state.epoch - 1]
        if e.state.best_metric_epoch == -1 or e.state.metrics["dice"] > e.state.best_metric:
            e.state.best_metric, e.state.best_metric_epoch = e.state.metrics["dice"], e.state.epoch

    return engine


def test_atomic_saver_keeps_best_model_when_a_save_fails(tmp_path, monkeypatch):
    net = torch.nn.Linear(2, 2)
    saver = AtomicCheckpointSaver(str(tmp_path), {"model": net}, save_key_metric=True, key_metric_name="dice",
                                  key_metric_filename="model.pt")
    engine = _engine_with_metric([0.5, 0.7])
    saver.attach(engine)
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(ck.os, "replace",
                        lambda a, b: (replaced.append((Path(a).name, Path(b).name)), real_replace(a, b)))
    engine.run([0], max_epochs=1)
    assert replaced == [(f"model.pt.tmp-{os.getpid()}", "model.pt")]  # written to a temporary, then renamed
    first = (tmp_path / "model.pt").read_bytes()

    def failing_save(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        engine.run([0], max_epochs=2)  # epoch 2 is better: MONAI's saver deletes model.pt, then the save fails
    assert (tmp_path / "model.pt").read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_exception_before_any_iteration_keeps_the_previous_final_model(tmp_path):
    """A failure on STARTED (e.g. a damaged resume checkpoint) must not replace model_last.pt by weights the run
    never trained; MONAI's own saver, in the same setup, does. After an iteration the final save happens as in
    MONAI (the weights reached when the exception was raised)."""
    final = tmp_path / "model_last.pt"

    def fail(engine):
        raise RuntimeError(f"boom at iteration {engine.state.iteration}")

    for saver_cls, keeps_previous in ((AtomicCheckpointSaver, True), (CheckpointSaver, False)):
        save_checkpoint_atomically({"model": {"weight": torch.zeros(1)}}, final)  # the previous run's final model
        before = final.read_bytes()
        trainer, net, *_ = _tiny_trainer(2)
        # attached first: its EXCEPTION_RAISED handler is the one ignite runs (the first one re-raises)
        saver_cls(str(tmp_path), {"model": net}, save_final=True, final_filename="model_last.pt").attach(trainer)
        trainer.add_event_handler(Events.STARTED, fail)
        with pytest.raises(RuntimeError, match="boom at iteration 0"):
            trainer.run()
        assert (final.read_bytes() == before) is keeps_previous, saver_cls.__name__

    trainer, net, *_ = _tiny_trainer(2)
    saver = AtomicCheckpointSaver(str(tmp_path), {"model": net}, save_final=True, final_filename="model_last.pt")
    saver.attach(trainer)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=3), fail)
    with pytest.raises(RuntimeError, match="boom at iteration 3"):
        trainer.run()
    saved = load_checkpoint_file(final)  # ignite stores a single object's state_dict unwrapped
    assert saved.keys() == net.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in net.state_dict().items())


def test_monai_saver_would_lose_the_best_model_reference(tmp_path, monkeypatch):
    """Why AtomicCheckpointSaver exists: MONAI's own saver, same scenario, ends with no model.pt at all."""
    net = torch.nn.Linear(2, 2)
    saver = CheckpointSaver(str(tmp_path), {"model": net}, save_key_metric=True, key_metric_name="dice",
                            key_metric_filename="model.pt")
    engine = _engine_with_metric([0.5, 0.7])
    saver.attach(engine)
    engine.run([0], max_epochs=1)
    assert (tmp_path / "model.pt").exists()
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        engine.run([0], max_epochs=2)
    assert not (tmp_path / "model.pt").exists()


def test_best_metric_state_roundtrip_keeps_best_model_ranking(tmp_path):
    net = torch.nn.Linear(2, 2)
    saver = AtomicCheckpointSaver(str(tmp_path), {"model": net}, save_key_metric=True, key_metric_name="dice",
                                  key_metric_filename="model.pt")
    engine = _engine_with_metric([0.5, 0.9, 0.6])
    saver.attach(engine)
    engine.run([0], max_epochs=2)
    state = BestMetricState(engine, saver).state_dict()
    assert state["best_metric"] == pytest.approx(0.9) and state["best_metric_epoch"] == 2
    assert [s for s, _ in state["saved"]] == [pytest.approx(0.9)]
    path = tmp_path / "s.pt"
    save_checkpoint_atomically({"best": state}, path)

    # a resumed process: fresh engine and saver, restored from the file; epoch 3 (0.6) must NOT replace model.pt
    best_bytes = (tmp_path / "model.pt").read_bytes()
    engine2 = _engine_with_metric([0.5, 0.9, 0.6])
    saver2 = AtomicCheckpointSaver(str(tmp_path), {"model": torch.nn.Linear(2, 2)}, save_key_metric=True,
                                   key_metric_name="dice", key_metric_filename="model.pt")
    saver2.attach(engine2)
    BestMetricState(engine2, saver2).load_state_dict(load_checkpoint_file(path)["best"])
    engine2.load_state_dict({"epoch": 2, "max_epochs": 3, "epoch_length": 1})
    engine2.run([0], max_epochs=3)
    assert engine2.state.best_metric == pytest.approx(0.9) and engine2.state.best_metric_epoch == 2
    assert (tmp_path / "model.pt").read_bytes() == best_bytes


def test_rng_state_keeper_restores_every_generator(tmp_path):
    transforms = Compose([RandFlipd(keys="image", prob=0.5), RandGaussianNoised(keys="image", prob=0.5)])
    ds = [{"x": 1}]  # sources may hold anything; only random transforms are collected
    keeper = RNGStateKeeper([ds, transforms])
    transforms.set_random_state(5)
    torch.rand(3), np.random.rand(2), random.random()
    path = tmp_path / "rng.pt"
    save_checkpoint_atomically({"rng": keeper.state_dict()}, path)

    def draws():
        return (torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)],
                [t.R.rand() for t in transforms.transforms],
                transforms.transforms[1].rand_gaussian_noise.R.rand())

    expected = draws()
    torch.manual_seed(123), np.random.seed(123), random.seed(123), transforms.set_random_state(77)
    assert draws() != expected
    keeper.load_state_dict(load_checkpoint_file(path)["rng"])  # weights_only load of the state
    assert draws() == expected
    # a configuration with other random transforms cannot take this state
    with pytest.raises(IncompatibleCheckpointError, match="random transform"):
        RNGStateKeeper([Compose([RandFlipd(keys="image")])]).load_state_dict(load_checkpoint_file(path)["rng"])


def test_rng_state_keeper_gives_each_rank_its_own_state(monkeypatch):
    keeper = RNGStateKeeper()
    torch.manual_seed(10)
    s0 = keeper.state_dict()
    after0 = torch.rand(3)
    torch.manual_seed(11)
    s1 = keeper.state_dict()
    after1 = torch.rand(3)
    saved = {"ranks": [s0, s1]}  # what rank 0 writes under DDP (all_gather_object of the local states)
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    for rank, expected in ((0, after0), (1, after1)):
        monkeypatch.setattr(dist, "get_rank", lambda group=None, r=rank: r)
        keeper.load_state_dict(saved)
        assert torch.equal(torch.rand(3), expected)


# ------------------------------------------------------------------------- the bundle command, killed and resumed
def tiny_resume_config() -> dict:
    """A small training bundle with the resume wiring of the real bundles (see monai_unetzoo.checkpoints)."""
    return {
        "imports": ["$import os", "$import signal", "$import numpy as np", "$import torch", "$import monai",
                    "$import ignite", "$import monai_unetzoo", "$import monai_unetzoo.checkpoints"],
        "output_dir": "out",
        "ckpt_dir": "$@output_dir + '/models'",
        "resume": False,
        "epochs": 4,
        "kill_at_iteration": 0,
        "seed": 7,
        "device": "$torch.device('cpu')",
        "make_items": "$lambda start, n: [{'image': np.random.RandomState(i).rand(1, 24, 24).astype(np.float32), "
                      "'label': (np.random.RandomState(i + 1000).rand(1, 24, 24) > 0.6).astype(np.float32)} "
                      "for i in range(start, start + n)]",
        "network": {"_target_": "monai_unetzoo.networks.ClassicUNet", "spatial_dims": 2, "in_channels": 1,
                    "out_channels": 2, "features": [4, 8], "norm": "instance"},
        "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": 0.01},
        "lr_scheduler": {"_target_": "torch.optim.lr_scheduler.StepLR", "optimizer": "@optimizer", "step_size": 1,
                         "gamma": 0.7},
        "loss": {"_target_": "DiceCELoss", "to_onehot_y": True, "softmax": True},
        "train_transforms": {"_target_": "Compose", "transforms": [
            {"_target_": "RandFlipd", "keys": ["image", "label"], "prob": 0.5, "spatial_axis": 0},
            {"_target_": "RandGaussianNoised", "keys": "image", "prob": 0.5, "std": 0.1}]},
        "train_dataset": {"_target_": "Dataset", "data": "$@make_items(0, 8)", "transform": "@train_transforms"},
        "train_loader": {"_target_": "DataLoader", "dataset": "@train_dataset", "batch_size": 2, "shuffle": True,
                         "num_workers": 0},
        "val_dataset": {"_target_": "Dataset", "data": "$@make_items(100, 4)"},
        "val_loader": {"_target_": "DataLoader", "dataset": "@val_dataset", "batch_size": 2, "num_workers": 0},
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@val_loader",
                      "network": "@network",
                      "postprocessing": {"_target_": "AsDiscreted", "keys": ["pred", "label"],
                                         "argmax": [True, False], "to_onehot": 2},
                      "key_val_metric": {"val_dice": {
                          "_target_": "MeanDice", "include_background": False,
                          "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}},
                      "val_handlers": ["@best_saver"]},
        "best_saver": {"_target_": "monai_unetzoo.checkpoints.AtomicCheckpointSaver", "save_dir": "@ckpt_dir",
                       "save_dict": {"model": "@network"}, "save_key_metric": True, "key_metric_filename": "model.pt"},
        "resume_state": {
            "network": "@network", "optimizer": "@optimizer", "lr_scheduler": "@lr_scheduler",
            "best": {"_target_": "monai_unetzoo.checkpoints.BestMetricState", "engine": "@evaluator",
                     "saver": "@best_saver"},
            "rng": {"_target_": "monai_unetzoo.checkpoints.RNGStateKeeper", "sources": ["@train_dataset"]}},
        "train_handlers": [
            {"_target_": "monai_unetzoo.checkpoints.ResumeCheckpointLoader", "load_dict": "@resume_state",
             "resume": "@resume", "save_dir": "@ckpt_dir"},
            {"_target_": "LrScheduleHandler", "lr_scheduler": "@lr_scheduler", "print_lr": False},
            {"_target_": "ValidationHandler", "validator": "@evaluator", "epoch_level": True, "interval": 1},
            {"_target_": "StatsHandler", "tag_name": "train_loss",
             "output_transform": "$monai.handlers.from_engine(['loss'], first=True)"},
            {"_target_": "monai_unetzoo.checkpoints.ResumeCheckpointSaver", "save_dir": "@ckpt_dir",
             "save_dict": "@resume_state", "save_interval": 1},
            {"_target_": "monai_unetzoo.checkpoints.AtomicCheckpointSaver", "save_dir": "@ckpt_dir",
             "save_dict": {"model": "@network"}, "save_final": True, "final_filename": "model_final.pt"}],
        "trainer": {"_target_": "SupervisedTrainer", "device": "@device", "max_epochs": "@epochs",
                    "train_data_loader": "@train_loader", "network": "@network", "optimizer": "@optimizer",
                    "loss_function": "@loss", "train_handlers": "@train_handlers", "amp": False},
        # test hook: die by SIGKILL (no clean-up, as an OOM kill or a pre-empted job) after iteration N
        "kill_hook": "$None if int(@kill_at_iteration) <= 0 else @trainer.add_event_handler("
                     "ignite.engine.Events.ITERATION_COMPLETED(once=int(@kill_at_iteration)), "
                     "lambda e: os.kill(os.getpid(), signal.SIGKILL))",
        "initialize": ["$torch.set_num_threads(1)", "$monai.utils.set_determinism(seed=@seed)"],
        "training": ["$@kill_hook", "$@trainer.run()",
                     "$print('RESULT', @evaluator.state.best_metric, @evaluator.state.best_metric_epoch, "
                     "@trainer.state.epoch, @trainer.state.iteration)"],
    }


def _bundle_cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(config),
            "--output_dir", str(out), *extra]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    return env


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint_file(path)


@pytest.mark.slow
def test_bundle_killed_and_resumed_matches_uninterrupted_bitwise(tmp_path):
    config = tmp_path / "train.json"
    config.write_text(json.dumps(tiny_resume_config(), indent=1))
    no_rng = tiny_resume_config()
    del no_rng["resume_state"]["rng"]
    config_no_rng = tmp_path / "train_no_rng.json"
    config_no_rng.write_text(json.dumps(no_rng, indent=1))
    full, killed = tmp_path / "full", tmp_path / "killed"

    # 4 epochs x 4 iterations; the kill comes at iteration 10, i.e. in epoch 3 after the epoch-2 checkpoint.
    # (--resume true without a checkpoint, and with a truncated one, are tested on the repository's DRIVE bundle in
    # test_bundle_robustness.py.)
    procs = [subprocess.Popen(_bundle_cmd(config, full), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, encoding="utf-8", errors="replace"),
             subprocess.Popen(_bundle_cmd(config, killed, "--kill_at_iteration", "10"), cwd=tmp_path, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace")]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert procs[0].returncode == 0, outs[0][-3000:]
    assert procs[1].returncode == -signal.SIGKILL, outs[1][-3000:]
    assert "Epoch: 3/4, Iter: 2/4" in outs[1] and "Epoch: 3/4, Iter: 3/4" not in outs[1]
    assert not (killed / "models" / "model_final.pt").exists()
    ckpt = load_checkpoint_file(killed / "models" / "resume.pt")
    assert ckpt["trainer"]["iteration"] == 8  # the epoch-2 state; iterations 9-10 are lost with the process
    assert sorted(ckpt) == ["best", "lr_scheduler", "network", "optimizer", "rng", "trainer"]
    assert not list((killed / "models").glob("*.tmp-*"))

    control = tmp_path / "control"
    shutil.copytree(killed, control)
    procs = [subprocess.Popen(_bundle_cmd(config, killed, "--resume", "true"), cwd=tmp_path, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace"),
             subprocess.Popen(_bundle_cmd(config_no_rng, control, "--resume", "true"), cwd=tmp_path, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace")]
    outs2 = [p.communicate(timeout=300)[0] for p in procs]
    assert procs[0].returncode == 0, outs2[0][-3000:]
    assert procs[1].returncode == 0, outs2[1][-3000:]
    resumed_log = outs2[0]
    assert "Epoch: 1/4" not in resumed_log and "Epoch: 2/4" not in resumed_log
    assert "Epoch: 3/4, Iter: 1/4" in resumed_log and "Epoch: 4/4, Iter: 4/4" in resumed_log

    ref = _weights(full / "models" / "model_final.pt")
    res = _weights(killed / "models" / "model_final.pt")
    assert ref.keys() == res.keys()
    for k in ref:
        assert torch.equal(ref[k], res[k]), f"{k}: max |diff| {(ref[k] - res[k]).abs().max()}"
    # counters, LR schedule, optimizer moments, best metric: the whole end state is the same
    ref_state, res_state = (load_checkpoint_file(d / "models" / "resume.pt") for d in (full, killed))
    assert ref_state["trainer"] == res_state["trainer"] == {"epoch_length": 4, "iteration": 16, "max_epochs": 4}
    assert ref_state["lr_scheduler"] == res_state["lr_scheduler"]
    assert ref_state["best"] == res_state["best"]
    for a, b in zip(ref_state["optimizer"]["state"].values(), res_state["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    ref_line = next(ln for ln in outs[0].splitlines() if ln.startswith("RESULT"))
    assert ref_line in resumed_log
    assert (full / "models" / "model.pt").read_bytes() != b"" and torch.equal(
        *(next(iter(_weights(d / "models" / "model.pt").values())) for d in (full, killed)))

    # control: resuming without the RNG state draws other shuffles/augmentations -> other weights
    ctl = _weights(control / "models" / "model_final.pt")
    assert any(not torch.equal(ref[k], ctl[k]) for k in ref)
