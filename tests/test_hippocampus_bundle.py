"""MSD data handling and the hippocampus bundle (bundles/hippocampus), run as a user runs it.

The bundle commands run in subprocesses exactly as documented (``python -m monai.bundle run ...``); the real-data
run is tiny (4 training cases, 1 epoch, 2 validation cases), so the network is barely trained -- what is checked is
the pipeline: the CSV the evaluation writes is recomputed independently (numpy Dice, scipy-based HD95 and surface
Dice from the saved prediction and the label file), the inference output is read back with nibabel and must lie on
each input's grid (shape and affine, also for an LPS, anisotropic input), and the inference and evaluation configs
must predict identical label maps for the same cases.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from monai_unetzoo.data.msd import (
    MSDDatasetError,
    build_msd_datalist,
    draw_synthetic_hippocampus,
    msd_case_id,
    msd_datalists,
    msd_label_names,
    resolve_msd_dataset_dir,
    split_msd_cases,
    volume_inference_datalist,
    write_synthetic_msd_hippocampus,
)

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "hippocampus"


# ------------------------------------------------------------------------------------------------ helpers


def numpy_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    denom = pred.sum() + truth.sum()
    return float(2.0 * np.logical_and(pred, truth).sum() / denom) if denom else float("nan")


def surface_distances(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances (voxels) from each boundary voxel of ``a`` to the boundary of ``b`` and vice versa.

    Boundary = mask minus its erosion (6-neighbourhood), the usual definition (e.g. the Hausdorff/NSD code of
    DeepMind's surface-distance package without sub-voxel areas); scipy's exact Euclidean distance transform.
    """
    from scipy.ndimage import binary_erosion, distance_transform_edt

    ea, eb = a ^ binary_erosion(a), b ^ binary_erosion(b)
    return distance_transform_edt(~eb)[ea], distance_transform_edt(~ea)[eb]


def run_bundle(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], cwd=REPO, env=env,
                          capture_output=True, encoding="utf-8", errors="replace", timeout=timeout)
    assert proc.returncode == 0, f"bundle command failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


def write_msd(root: Path, n: int = 4, shape=(20, 24, 20), seed: int = 0) -> Path:
    """A tiny MSD folder (synthetic volumes) written here, independently of write_synthetic_msd_hippocampus."""
    import nibabel as nib

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(n):
        image, label = draw_synthetic_hippocampus(shape, seed + i)
        name = f"case_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, np.eye(4)), str(root / "imagesTr" / name))
        nib.save(nib.Nifti1Image(label, np.eye(4)), str(root / "labelsTr" / name))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (root / "dataset.json").write_text(json.dumps(
        {"name": "t", "labels": {"0": "background", "1": "Anterior", "2": "Posterior"}, "training": training,
         "test": []}))
    return root


# ------------------------------------------------------------------------------------------------ MSD data


def test_msd_datalist_paths_and_case_ids(tmp_path):
    root = write_msd(tmp_path / "Task")
    items = build_msd_datalist(root)
    assert [d["case_id"] for d in items] == [f"case_{i:03d}" for i in range(4)]
    for d in items:
        assert Path(d["image"]).is_file() and Path(d["label"]).is_file()
        assert Path(d["image"]).parent == (root / "imagesTr").resolve()
    assert msd_label_names(root) == ["background", "Anterior", "Posterior"]
    assert msd_case_id("/x/hippocampus_004.nii.gz") == "hippocampus_004"
    assert msd_case_id("a.b.nii") == "a.b"


def test_msd_datalist_lists_every_problem(tmp_path):
    import nibabel as nib

    root = write_msd(tmp_path / "Task", n=4)
    (root / "labelsTr" / "case_000.nii.gz").unlink()  # missing label
    (root / "imagesTr" / "case_001.nii.gz").unlink()  # missing image
    (root / "imagesTr" / "case_002.nii.gz").write_bytes(b"not a nifti file")  # malformed
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)), str(root / "labelsTr" / "case_003.nii.gz"))
    with pytest.raises(MSDDatasetError) as err:
        build_msd_datalist(root)
    msg = str(err.value)
    assert "4 problem(s)" in msg
    assert f"{(root / 'labelsTr' / 'case_000.nii.gz').resolve()} (missing label file" in msg
    assert f"{(root / 'imagesTr' / 'case_001.nii.gz').resolve()} (missing image file" in msg
    assert "case_002.nii.gz: cannot be read" in msg
    assert "case_003.nii.gz: label shape (5, 5, 5) differs" in msg


def test_msd_not_an_msd_folder(tmp_path):
    with pytest.raises(MSDDatasetError, match="does not exist"):
        build_msd_datalist(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MSDDatasetError, match="dataset.json is missing"):
        build_msd_datalist(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "dataset.json").write_text("{not json")
    with pytest.raises(MSDDatasetError, match="cannot be parsed as JSON"):
        build_msd_datalist(tmp_path / "bad")
    (tmp_path / "bad" / "dataset.json").write_text(json.dumps({"training": [{"image": "a.nii.gz"}]}))
    with pytest.raises(MSDDatasetError, match=r"entries \[0\] are not"):
        build_msd_datalist(tmp_path / "bad")


def test_split_is_fixed_disjoint_and_order_independent():
    items = [{"case_id": f"hippocampus_{i:03d}", "image": f"{i}.nii.gz"} for i in range(208)]
    train, val = split_msd_cases(items)
    assert (len(train), len(val)) == (166, 42)  # round(0.2 * 208)
    ids_t, ids_v = {d["case_id"] for d in train}, {d["case_id"] for d in val}
    assert not ids_t & ids_v and len(ids_t | ids_v) == 208
    shuffled = [items[i] for i in np.random.default_rng(1).permutation(208)]
    train2, val2 = split_msd_cases(shuffled)
    assert [d["case_id"] for d in val2] == [d["case_id"] for d in val]  # same split whatever the JSON order
    assert [d["case_id"] for d in val] == sorted(ids_v)
    _, val_other_seed = split_msd_cases(items, seed=1)
    assert {d["case_id"] for d in val_other_seed} != ids_v
    assert len(split_msd_cases(items, num_val=10)[1]) == 10
    with pytest.raises(ValueError, match="num_val"):
        split_msd_cases(items, num_val=208)


def test_msd_datalists_subsets_keep_the_split(tmp_path):
    root = write_msd(tmp_path / "Task", n=10)
    full = msd_datalists(root, val_fraction=0.3)
    small = msd_datalists(root, val_fraction=0.3, num_train_cases=2, num_val_cases=1)
    assert small["training"] == full["training"][:2] and small["validation"] == full["validation"][:1]
    assert len(full["validation"]) == 3 and len(full["all_training"]) == 10 and full["test"] == []


def test_synthetic_hippocampus_geometry():
    image, label = draw_synthetic_hippocampus((36, 50, 36), seed=3)
    assert image.dtype == np.float32 and label.dtype == np.uint8 and image.shape == label.shape == (36, 50, 36)
    assert set(np.unique(label)) == {0, 1, 2}
    ant, post = np.argwhere(label == 1).mean(0), np.argwhere(label == 2).mean(0)
    assert ant[1] > post[1] + 5  # anterior part lies towards +y (A in RAS), as in Task04
    assert image[label > 0].mean() > image[label == 0].mean()  # the structure is brighter than its surroundings


def test_resolve_dataset_dir_synthetic_and_explicit(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="monai_unetzoo.data.msd"):
        out = resolve_msd_dataset_dir("synthetic", tmp_path / "syn", num_training=3, num_test=1, shape=(20, 24, 20))
    assert "SYNTHETIC DATA" in caplog.text
    lists = msd_datalists(out)
    assert len(lists["all_training"]) == 3 and len(lists["test"]) == 1
    assert volume_inference_datalist(Path(out) / "imagesTs")[0]["case_id"] == "synthetic_hippocampus_004"
    # An explicit folder that is not an MSD data set is an error, never a silent synthetic fall-back.
    (tmp_path / "not_msd").mkdir()
    with pytest.raises(MSDDatasetError, match="not an MSD data set folder"):
        resolve_msd_dataset_dir(tmp_path / "not_msd", tmp_path / "syn2")
    assert not (tmp_path / "syn2").exists()
    # Refuses to overwrite a folder that it did not generate.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        write_synthetic_msd_hippocampus(tmp_path / "mine")


# ------------------------------------------------------------------------------------------------ bundle configs


def test_bundle_configs_agree_with_presets_and_each_other(hippocampus_dir, tmp_path):
    """train.json, inference.json and presets.mri_preprocessing prepare an image identically; same network."""
    from monai.bundle import ConfigParser

    from monai_unetzoo.presets import mri_preprocessing

    train = ConfigParser()
    train.read_config(str(BUNDLE / "train.json"))
    train.update({"dataset_dir": str(hippocampus_dir), "output_dir": str(tmp_path)})
    infer = ConfigParser()
    infer.read_config(str(BUNDLE / "inference.json"))
    infer.update({"output_dir": str(tmp_path), "input_dir": str(hippocampus_dir / "imagesTr")})
    assert train.get("network_def") == infer.get("network_def")
    assert train.get("patch_size") == infer.get("patch_size")
    case = train.get_parsed_content("datalists")["validation"][0]
    a = train.get_parsed_content("validate#preprocessing")(dict(case))["image"]
    b = infer.get_parsed_content("preprocessing")({"image": case["image"]})["image"]
    c = mri_preprocessing()({"image": case["image"]})["image"]
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(b.numpy(), c.numpy(), atol=1e-6)
    np.testing.assert_allclose(b.affine.numpy(), c.affine.numpy())


def test_bundle_rejects_a_folder_that_is_not_msd(tmp_path, capsys):
    """The data problem is printed and the run exits 2 (not 1 with a traceback of the config resolution)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "train.json"))
    (tmp_path / "DRIVE").mkdir()
    parser.update({"dataset_dir": str(tmp_path / "DRIVE"), "output_dir": str(tmp_path / "out")})
    with pytest.raises(SystemExit) as err:
        parser.get_parsed_content("datalists")
    assert err.value.code == 2
    assert "not an MSD data set folder" in capsys.readouterr().err
    assert not (tmp_path / "out" / "synthetic_Task04").exists()


# ------------------------------------------------------------------------------------------------ real-data runs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import require_data

    data = require_data("Task04_Hippocampus")
    out = tmp_path_factory.mktemp("hippocampus_run")
    common = ["--dataset_dir", str(data), "--output_dir", str(out), "--num_train_cases", "4", "--num_val_cases", "2"]
    proc = run_bundle("training", "--config_file", str(BUNDLE / "train.json"), *common, "--epochs", "1",
                      "--val_interval", "1")
    return {"data": data, "out": out, "common": common, "log": proc.stdout + proc.stderr}


@pytest.mark.real_data
def test_training_run_writes_checkpoints(trained):
    import torch

    from monai_unetzoo.networks import ResUNet

    out = trained["out"]
    assert "val_mean_dice" in trained["log"]
    assert "SYNTHETIC DATA" not in trained["log"]
    for name in ("model.pt", "model_last.pt", "train_log.txt"):
        assert (out / name).is_file(), name
    net = ResUNet(3, 1, 3, features=(16, 32, 64, 128))
    net.load_state_dict(torch.load(out / "model.pt", map_location="cpu"))  # strict: same architecture
    assert set(torch.load(out / "model_last.pt", map_location="cpu")) == {"model", "optimizer", "lr_scheduler"}


@pytest.mark.real_data
def test_evaluate_csv_matches_independent_metrics(trained):
    import nibabel as nib

    out = trained["out"]
    run_bundle("evaluating", "--config_file", str([str(BUNDLE / "train.json"), str(BUNDLE / "evaluate.json")]),
               *trained["common"])
    with open(out / "eval" / "metrics_validation_per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert list(rows[0]) == ["case"] + [f"{m}_{c}" for m in ("dice", "hd95", "surface_dice")
                                        for c in ("Anterior", "Posterior", "mean")]
    val_cases = msd_datalists(trained["data"], num_val_cases=2)["validation"]
    assert [Path(r["case"]).name for r in rows] == [Path(c["image"]).name for c in val_cases]
    for row, case in zip(rows, val_cases):
        pred_file = out / "eval" / "predictions" / f"{case['case_id']}_seg.nii.gz"
        pred_img, label_img = nib.load(str(pred_file)), nib.load(case["label"])
        assert pred_img.shape == label_img.shape
        np.testing.assert_allclose(pred_img.affine, label_img.affine, atol=1e-5)
        pred, label = np.asarray(pred_img.dataobj), np.asarray(label_img.dataobj).astype(np.int64)
        assert set(np.unique(pred)) <= {0, 1, 2}
        for c, name in ((1, "Anterior"), (2, "Posterior")):
            p, t = pred == c, label == c
            assert float(row[f"dice_{name}"]) == pytest.approx(numpy_dice(p, t), abs=1e-5)
            if p.any():  # Task04 labels always hold both classes; an empty prediction gives inf/nan distances
                d_pt, d_tp = surface_distances(p, t)
                hd95 = max(np.quantile(d_pt, 0.95), np.quantile(d_tp, 0.95))
                nsd = ((d_pt <= 1.0).sum() + (d_tp <= 1.0).sum()) / (d_pt.size + d_tp.size)  # 1 mm tolerance
                assert float(row[f"hd95_{name}"]) == pytest.approx(hd95, rel=1e-4, abs=1e-4)
                assert float(row[f"surface_dice_{name}"]) == pytest.approx(nsd, abs=1e-5)
        assert float(row["dice_mean"]) == pytest.approx(
            (float(row["dice_Anterior"]) + float(row["dice_Posterior"])) / 2, abs=1e-6)
    metrics = (out / "eval" / "metrics.csv").read_text()
    assert "dice," in metrics and "hd95," in metrics and "surface_dice," in metrics
    summary = json.loads((out / "eval" / "metrics_validation.json").read_text())
    assert summary["cases"] == [c["case_id"] for c in val_cases]
    for k, name in enumerate(("Anterior", "Posterior")):
        assert summary["per_class_mean"]["dice"][k] == pytest.approx(np.mean([float(r[f"dice_{name}"]) for r in rows]))


@pytest.mark.real_data
def test_inference_writes_on_each_input_grid(trained, tmp_path):
    """Predictions of inference.json: same shape/affine as each input (also LPS + anisotropic); equal to evaluate's."""
    import nibabel as nib

    out = trained["out"]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    val_cases = msd_datalists(trained["data"], num_val_cases=2)["validation"]
    for case in val_cases:
        os.symlink(case["image"], inputs / Path(case["image"]).name)
    image, _ = draw_synthetic_hippocampus((30, 40, 28), seed=7)
    lps = np.array([[-1.2, 0, 0, 40.0], [0, -0.9, 0, 30.0], [0, 0, 1.4, -10.0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(image, lps), str(inputs / "oblique_case.nii.gz"))
    pred_dir = tmp_path / "preds"
    run_bundle("--config_file", str(BUNDLE / "inference.json"), "--output_dir", str(out), "--input_dir",
               str(inputs), "--infer_dir", str(pred_dir))
    for src in sorted(inputs.iterdir()):
        cid = msd_case_id(src)
        pred_img, in_img = nib.load(str(pred_dir / f"{cid}_seg.nii.gz")), nib.load(str(src))
        assert pred_img.shape == in_img.shape, cid
        np.testing.assert_allclose(pred_img.affine, in_img.affine, atol=1e-4)
        assert pred_img.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(pred_img.dataobj))) <= {0, 1, 2}
    eval_dir = out / "eval" / "predictions"
    if not eval_dir.is_dir():
        pytest.skip("evaluate predictions not present (run together with test_evaluate_csv_matches_independent_metrics)")
    for case in val_cases:
        a = np.asarray(nib.load(str(pred_dir / f"{case['case_id']}_seg.nii.gz")).dataobj)
        b = np.asarray(nib.load(str(eval_dir / f"{case['case_id']}_seg.nii.gz")).dataobj)
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------- issue 21: NaN-safe, deterministic
def _tiny_training(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """The issue's reproducer: 16^3 patches, so the ResUNet reaches a 2^3 bottleneck (unsafe bf16 backward)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(BUNDLE / "train.json"),
           "--dataset_dir", str(data), "--output_dir", str(out), "--patch_size", "[16,16,16]", "--batch_size", "1",
           "--val_interval", "1", "--num_workers", "0", "--num_threads", "1", "--device", "cpu", *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=300)


@pytest.fixture(scope="module")
def tiny_msd(tmp_path_factory):
    return write_synthetic_msd_hippocampus(tmp_path_factory.mktemp("tiny_msd"), num_training=4, num_test=1,
                                           shape=(20, 20, 20), seed=0)


@pytest.mark.slow
def test_tiny_training_reruns_bit_identical_and_finite(tiny_msd, tmp_path):
    """Two runs of the same configuration end with the same weights and optimizer state, bit for bit."""
    import torch

    from monai_unetzoo.inference import cpu_has_native_bf16
    from monai_unetzoo.numerics import nonfinite_tensor_names

    states, logs = [], []
    for run in ("a", "b"):
        proc = _tiny_training(tiny_msd, tmp_path / run, "--epochs", "2")
        assert proc.returncode == 0, proc.stderr[-4000:]
        logs.append(proc.stderr)
        states.append(torch.load(tmp_path / run / "model_last.pt", map_location="cpu", weights_only=True))
    assert nonfinite_tensor_names(states[0]) == []
    for part in ("model", "optimizer"):
        a, b = states[0][part], states[1][part]
        flat_a = [a[k] for k in sorted(a)] if part == "model" else [s[k] for s in a["state"].values() for k in s]
        flat_b = [b[k] for k in sorted(b)] if part == "model" else [s[k] for s in b["state"].values() for k in s]
        assert len(flat_a) == len(flat_b) > 0 and all(torch.equal(x, y) for x, y in zip(flat_a, flat_b)), part
    if cpu_has_native_bf16():  # autocast 'auto' chose fp32 for this patch, and said why
        assert all("in fp32, not bf16: convolutions see inputs smaller than their kernels" in log for log in logs)


@pytest.mark.slow
def test_diverging_training_fails_with_the_nan_error_and_saves_nothing(tiny_msd, tmp_path):
    """A learning rate of 1e30 makes the loss NaN in the second iteration: exit status non-zero, the error names the
    iteration, the loss and the precision, and no checkpoint is written."""
    proc = _tiny_training(tiny_msd, tmp_path / "out", "--epochs", "1", "--learning_rate", "1e30",
                          "--autocast", "fp32")
    assert proc.returncode != 0
    assert ("NonFiniteTrainingError: training stopped at epoch 1, iteration 2: the loss is nan; precision: fp32"
            in proc.stderr), proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.pt")) == []
