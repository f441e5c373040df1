"""The repository's bundles (``bundles/drive``, ``bundles/hippocampus``) run through ``python -m monai.bundle run``:
bad data is rejected before training with one error listing every problem, and a training killed by SIGKILL and
resumed with ``--resume true`` ends bitwise equal to an uninterrupted one.

Data is generated here: tiny MSD-layout NIfTI volumes (hippocampus) and the synthetic DRIVE-layout generator
(``monai_unetzoo.data.synthetic``), each bad case carrying exactly one defect written by the test, so the expected
``<file>: <problem>`` lines are known independently of the validator. Runs are shortened by command-line overrides
(epochs, patch size, workers); the configs themselves are the repository's.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from monai_unetzoo.checkpoints import load_checkpoint_file

REPO = Path(__file__).resolve().parents[1]
DRIVE_TRAIN = str(REPO / "bundles" / "drive" / "train.json")
HIPPO_TRAIN = str(REPO / "bundles" / "hippocampus" / "train.json")
CKPT_FILES = ("model.pt", "model_last.pt", "resume.pt")


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")


def _bundle(config: str, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config, *args]
    return subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8", errors="replace")


def _finish(*procs: subprocess.Popen, timeout: int = 240) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append((p.returncode, stdout, stderr))
    return out


def _error_block(stderr: str, header_start: str) -> list[str]:
    """The validator's message: the ``ERROR: ...`` header line and the indented ``<file>: <problem>`` lines."""
    lines = stderr.rstrip().splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith(header_start)]
    assert len(starts) == 1, f"expected one error header {header_start!r} in stderr:\n{stderr[-3000:]}"
    block = lines[starts[0]:]
    assert all(ln.startswith("  ") for ln in block[1:]), block  # nothing after the problem list
    return block


def _assert_reported(block: list[str], expected: list[tuple[str, str]], clean_files: list[str]) -> None:
    problems = block[1:]
    assert len(problems) == len(expected), "\n".join(block)
    for where, text in expected:
        hits = [ln for ln in problems if ln.startswith(f"  {where}: ") and text in ln]
        assert len(hits) == 1, f"{where}: {text!r} not reported exactly once in:\n" + "\n".join(block)
    for f in clean_files:
        assert not any(ln.startswith(f"  {f}: ") for ln in problems), f"clean file {f} reported"


def _assert_no_training(out_dir: Path, stdout: str, stderr: str) -> None:
    for name in CKPT_FILES:
        assert not (out_dir / name).exists(), f"{name} written although the data check failed"
    assert "Epoch: 1/" not in stdout + stderr  # StatsHandler's first iteration line
    log = out_dir / "train_log.txt"
    assert not log.exists() or "Epoch: 1/" not in log.read_text()


# ------------------------------------------------------------------------------------- hippocampus: bad data
SHAPE = (16, 16, 16)


def _nii(path: Path, data: np.ndarray, origin=(0.0, 0.0, 0.0)) -> None:
    affine = np.eye(4)
    affine[:3, 3] = origin
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))


def _hippo_label() -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[4:8, 4:10, 4:8] = 1
    lab[8:11, 4:10, 8:12] = 2
    return lab


def _hippo_image(seed: int) -> np.ndarray:
    return (np.random.RandomState(seed).rand(*SHAPE) * 500 + 100).astype(np.float32)


def write_bad_msd(root: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """An MSD-layout folder with 3 clean cases and 7 cases with one defect each.

    Returns (expected problems as (absolute file, message substring), the clean cases' files).
    """
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training, expected, clean = [], [], []

    def case(name: str, image=None, label=None, label_origin=(0.0, 0.0, 0.0)) -> tuple[str, str]:
        img, lab = root / "imagesTr" / f"{name}.nii.gz", root / "labelsTr" / f"{name}.nii.gz"
        _nii(img, _hippo_image(len(training)) if image is None else image)
        _nii(lab, _hippo_label() if label is None else label, origin=label_origin)
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
        return str(img.resolve()), str(lab.resolve())

    for name in ("clean_a", "clean_b", "clean_c"):
        clean.extend(case(name))
    _, lab = case("label_shape", label=np.pad(_hippo_label(), ((0, 0), (0, 0), (0, 1))))
    expected.append((lab, "label spatial shape (16, 16, 17) differs from the image"))
    _, lab = case("label_geometry", label_origin=(0.0, 3.0, 0.0))
    expected.append((lab, "label geometry differs from the image"))
    img, _ = case("two_channels", image=np.stack([_hippo_image(1), _hippo_image(2)], axis=-1))
    expected.append((img, "2 channel(s) (shape (2, 16, 16, 16)), the network expects in_channels=1"))
    _, lab = case("all_background", label=np.zeros(SHAPE, np.uint8))
    expected.append((lab, "the label is empty (all background)"))
    bad = _hippo_label()
    bad[0, 0, 0] = 5
    _, lab = case("class_5", label=bad)
    expected.append((lab, "label values [5] outside the declared classes 0..2"))
    nan = _hippo_image(3)
    nan[1, 1, 1], nan[2, 2, 2], nan[3, 3, 3] = np.nan, np.nan, np.inf
    img, _ = case("nan_inf", image=nan)
    expected.append((img, "2 NaN and 1 Inf intensity value(s)"))
    img, _ = case("truncated")
    data = Path(img).read_bytes()
    Path(img).write_bytes(data[: len(data) // 2])
    expected.append((img, "cannot be read (unreadable, truncated or corrupt file)"))

    (root / "dataset.json").write_text(json.dumps({
        "name": "BadHippocampus", "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
        "numTraining": len(training), "training": training, "test": []}))
    return expected, clean


@pytest.mark.slow
def test_hippocampus_bundle_rejects_bad_data_with_every_problem_in_one_error(tmp_path):
    data, out = tmp_path / "Task04_bad", tmp_path / "out"
    expected, clean = write_bad_msd(data)
    rc, stdout, stderr = _finish(_bundle(HIPPO_TRAIN, "--dataset_dir", str(data), "--output_dir", str(out),
                                         "--num_workers", "0", "--num_threads", "1"))[0]
    assert rc == 2, (stdout + stderr)[-3000:]
    block = _error_block(stderr, "ERROR: ")
    assert block[0] == (f"ERROR: {len(expected)} problem(s) in hippocampus training + validation datalist "
                        f"({data.resolve()}) (10 case(s) checked); fix or remove these before training or prediction:")
    _assert_reported(block, expected, clean)
    assert "Traceback" not in stderr
    _assert_no_training(out, stdout, stderr)


# ------------------------------------------------------------------------------------------- DRIVE: bad data
def write_bad_drive(root: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """Synthetic DRIVE layout (6 training images, 48 x 48), 5 of them corrupted with one defect each."""
    from monai_unetzoo.data import drive_case_paths, write_synthetic_drive

    write_synthetic_drive(root, num_training=6, num_test=1, image_size=(48, 48), seed=3)
    p = {cid: {k: str(v.resolve()) for k, v in drive_case_paths(root, "training", cid).items()}
         for cid in ("21", "22", "23", "24", "25", "26")}
    expected = []
    # 21: a grey-scale photograph (1 channel instead of RGB)
    Image.open(p["21"]["image"]).convert("L").save(p["21"]["image"], format="TIFF")
    expected.append((p["21"]["image"], "1 channel(s) (shape (1, 48, 48)), the network expects in_channels=3"))
    # 22: a truncated photograph (e.g. an interrupted copy)
    data = Path(p["22"]["image"]).read_bytes()
    Path(p["22"]["image"]).write_bytes(data[: len(data) // 2])
    expected.append((p["22"]["image"], "cannot be read (unreadable, truncated or corrupt file)"))
    # 23: an annotation without any vessel
    Image.fromarray(np.zeros((48, 48), np.uint8), mode="L").save(p["23"]["label"], format="GIF", optimize=False)
    expected.append((p["23"]["label"], "the label is empty (all background)"))
    # 24: a FOV mask of another size than its photograph
    Image.fromarray(np.full((48, 50), 255, np.uint8), mode="L").save(p["24"]["roi"], format="GIF", optimize=False)
    expected.append((p["24"]["roi"], "ROI spatial shape (48, 50) differs from the image"))
    # 25: an annotation with a grey value 128 next to DRIVE's 0/255
    lab = np.asarray(Image.open(p["25"]["label"])).copy()
    assert set(np.unique(lab)) == {0, 255}
    lab[0, :4] = 128
    Image.fromarray(lab, mode="L").save(p["25"]["label"], format="GIF", optimize=False)
    expected.append((p["25"]["label"], "label values [128] outside the declared classes [0, 255]"))
    clean = list(p["26"].values()) + [p["21"]["label"], p["23"]["image"], p["24"]["image"]]
    return expected, clean


@pytest.mark.slow
def test_drive_bundle_rejects_bad_data_with_every_problem_in_one_error(tmp_path):
    data, out, unchecked = tmp_path / "DRIVE_bad", tmp_path / "out", tmp_path / "out_unchecked"
    expected, clean = write_bad_drive(data)
    args = ["--dataset_dir", str(data), "--num_workers", "0", "--num_threads", "1"]
    (rc, stdout, stderr), (rc_off, out_off, err_off) = _finish(
        _bundle(DRIVE_TRAIN, *args, "--output_dir", str(out)),
        _bundle(DRIVE_TRAIN, *args, "--output_dir", str(unchecked), "--validate_data", "false"))
    # --validate_data false skips the check; the datalist builder's file-level checks still stop this data
    assert rc_off not in (0, 2) and "DriveDatasetError" in err_off, (out_off + err_off)[-3000:]
    assert "problem(s) in DRIVE training + validation datalist" not in err_off
    _assert_no_training(unchecked, out_off, err_off)

    assert rc == 2, (stdout + stderr)[-3000:]
    block = _error_block(stderr, "ERROR: ")
    assert block[0] == (f"ERROR: {len(expected)} problem(s) in DRIVE training + validation datalist ({data.resolve()}) "
                        "(6 case(s) checked); fix or remove these before training or prediction:")
    _assert_reported(block, expected, clean)
    assert "Traceback" not in stderr
    _assert_no_training(out, stdout, stderr)


def test_validate_data_switch(tmp_path):
    """``validate_data: false`` skips the check (the bundle's builder-level checks still apply later); true runs it.

    In-process through MONAI's ConfigParser on the repository config: the same expression the CLI evaluates.
    """
    from monai.bundle import ConfigParser

    data = tmp_path / "DRIVE_bad"
    expected, _ = write_bad_drive(data)
    # "false"/"true": what ``--validate_data false`` gives (python-fire keeps lower-case words as strings)
    for flag in (False, "false", True, "true"):
        parser = ConfigParser()
        parser.read_config(DRIVE_TRAIN)
        parser.update({"dataset_dir": str(data), "output_dir": str(tmp_path / "out"), "validate_data": flag})
        if flag in (False, "false"):
            assert parser.get_parsed_content("data_check") is None
        else:
            with pytest.raises(SystemExit) as stop:
                parser.get_parsed_content("data_check")
            assert stop.value.code == 2
    assert "$@data_check" in ConfigParser.load_config_files(DRIVE_TRAIN)["initialize"]
    assert "$@data_check" in ConfigParser.load_config_files(HIPPO_TRAIN)["initialize"]


# ------------------------------------------------------------------------------------ DRIVE: kill and resume
#: Test-only hook (merged after the repository's train.json for the run that is killed): SIGKILL, as an OOM kill or
#: a pre-empted job, right after iteration N -- no exception handler or clean-up runs.
KILL_HOOK = {
    "+imports": ["$import signal"],
    "kill_at_iteration": 0,
    "kill_hook": "$None if int(@kill_at_iteration) <= 0 else @train#trainer.add_event_handler("
                 "ignite.engine.Events.ITERATION_COMPLETED(once=int(@kill_at_iteration)), "
                 "lambda e: os.kill(os.getpid(), signal.SIGKILL))",
    "training": ["$@kill_hook", "$@train#trainer.run()"],
}

#: 4 training images -> 2 iterations per epoch (2 images per batch, 1 pass), 4 epochs, validation every epoch.
SHORT_RUN = ["--epochs", "4", "--val_interval", "1", "--passes_per_epoch", "1", "--patch_size", "[32,32]",
             "--num_workers", "0", "--num_threads", "1"]


def _load(path: Path) -> dict:
    return load_checkpoint_file(path)


def _assert_same_tensors(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), \
            f"{where}: max |diff| {(a.double() - b.double()).abs().max() if a.shape == b.shape else a.shape}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a} != {b}"


@pytest.mark.slow
def test_drive_bundle_killed_and_resumed_matches_uninterrupted_bitwise(tmp_path):
    from monai_unetzoo.data import write_synthetic_drive

    data = write_synthetic_drive(tmp_path / "DRIVE_synth", num_training=5, num_test=1, image_size=(64, 64), seed=0)
    kill_cfg = tmp_path / "kill_hook.json"
    kill_cfg.write_text(json.dumps(KILL_HOOK))
    full, killed = tmp_path / "full", tmp_path / "killed"
    common = ["--dataset_dir", str(data), *SHORT_RUN]

    # uninterrupted, and killed in epoch 3 (iteration 5 of 8) -- after the epoch-2 resume checkpoint
    (rc_full, out_full, err_full), (rc_kill, out_kill, err_kill) = _finish(
        _bundle(DRIVE_TRAIN, "--output_dir", str(full), *common),
        _bundle(f"['{DRIVE_TRAIN}','{kill_cfg}']", "--output_dir", str(killed), *common, "--kill_at_iteration", "5"))
    assert rc_full == 0, (out_full + err_full)[-3000:]
    assert rc_kill == -signal.SIGKILL, (out_kill + err_kill)[-3000:]
    log_kill = out_kill + err_kill
    assert "Epoch: 3/4, Iter: 1/2" in log_kill and "Epoch: 3/4, Iter: 2/2" not in log_kill
    assert not (killed / "model_last.pt").exists() and not list(killed.glob("*.tmp-*"))
    state = _load(killed / "resume.pt")
    assert state["trainer"]["iteration"] == 4 and state["trainer"]["epoch_length"] == 2  # the epoch-2 state
    assert sorted(state) == ["best", "lr_scheduler", "network", "optimizer", "rng", "trainer"]

    # the plain repository bundle (no test hook) resumes the killed run
    resumed = _bundle(DRIVE_TRAIN, "--output_dir", str(killed), *common, "--resume", "true")
    rc_res, out_res, err_res = _finish(resumed)[0]
    assert rc_res == 0, (out_res + err_res)[-3000:]
    log_res = out_res + err_res
    assert f"Resumed from {killed / 'resume.pt'}: epoch 2, iteration 4" in log_res
    assert not re.search(r"Epoch: [12]/4, Iter", log_res)  # epochs 1-2 are not trained again
    assert "Epoch: 3/4, Iter: 1/2" in log_res and "Epoch: 4/4, Iter: 2/2" in log_res
    # the final model, optimizer moments and LR schedule, the best model and the end state: bitwise equal
    _assert_same_tensors(_load(full / "model_last.pt"), _load(killed / "model_last.pt"), "model_last.pt")
    _assert_same_tensors(_load(full / "model.pt"), _load(killed / "model.pt"), "model.pt")
    ref_state, res_state = _load(full / "resume.pt"), _load(killed / "resume.pt")
    assert ref_state["trainer"] == res_state["trainer"] == {"epoch_length": 2, "iteration": 8, "max_epochs": 4}
    for key in ("best", "lr_scheduler", "optimizer", "network"):
        _assert_same_tensors(ref_state[key], res_state[key], f"resume.pt[{key}]")
    # ... and epochs 3-4 did change the weights (not a comparison of two untouched states)
    assert any(not torch.equal(state["network"][k], res_state["network"][k]) for k in state["network"])


@pytest.mark.slow
def test_drive_bundle_refuses_a_damaged_or_missing_resume_checkpoint(tmp_path):
    """``--resume true`` with a truncated ``resume.pt`` (or none) exits non-zero naming the file; no fresh start."""
    from monai_unetzoo.data import write_synthetic_drive

    data = write_synthetic_drive(tmp_path / "DRIVE_synth", num_training=5, num_test=1, image_size=(64, 64), seed=0)
    common = ["--dataset_dir", str(data), *SHORT_RUN, "--resume", "true"]
    damaged, empty = tmp_path / "damaged", tmp_path / "empty"
    damaged.mkdir()
    # a resume checkpoint of the bundle's layout, cut in half as by a full disk or an interrupted copy
    torch.save({"network": {"w": torch.randn(256, 256)}, "trainer": {"epoch_length": 2, "iteration": 4,
                                                                      "max_epochs": 4}}, damaged / "resume.pt")
    blob = (damaged / "resume.pt").read_bytes()
    (damaged / "resume.pt").write_bytes(blob[: len(blob) // 2])
    (damaged / "model.pt").write_bytes(b"previous best model")  # must survive the failed start

    (rc_dam, out_dam, err_dam), (rc_emp, out_emp, err_emp) = _finish(
        _bundle(DRIVE_TRAIN, "--output_dir", str(damaged), *common),
        _bundle(DRIVE_TRAIN, "--output_dir", str(empty), *common))

    assert rc_dam != 0
    log = out_dam + err_dam
    assert f"{damaged / 'resume.pt'}: truncated or corrupt checkpoint: not a PyTorch zip archive" in log
    assert "CorruptCheckpointError" in log
    assert not re.search(r"Epoch: \d/4, Iter", log)  # not a single training iteration
    assert sorted(p.name for p in damaged.glob("*.pt")) == ["model.pt", "resume.pt"]  # no model_last.pt
    assert (damaged / "resume.pt").read_bytes() == blob[: len(blob) // 2]  # left as it was, for inspection
    assert (damaged / "model.pt").read_bytes() == b"previous best model"

    assert rc_emp != 0
    log = out_emp + err_emp
    assert f"{empty / 'resume.pt'}: resume was requested but this checkpoint does not exist" in log
    assert not re.search(r"Epoch: \d/4, Iter", log)
    assert not list(empty.glob("*.pt"))
