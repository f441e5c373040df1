"""The DRIVE bundle (bundles/drive): the documented CLI command, real-DRIVE training/evaluation/inference, and
``verify_net_in_out``. Runs are kept tiny (a few iterations, two images); expectations come from independent
computations in this file (numpy metrics on files read with PIL, MONAI's plain ``sliding_window_inference``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "drive"
TRAIN = str(BUNDLE / "train.json")
EVALUATE = str(BUNDLE / "evaluate.json")
INFERENCE = str(BUNDLE / "inference.json")
META = str(BUNDLE / "metadata.json")


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=REPO, env=env, capture_output=True,
                          encoding="utf-8", errors="replace", timeout=timeout)
    return proc


def _tail(proc: subprocess.CompletedProcess, n: int = 4000) -> str:
    return (proc.stdout + proc.stderr)[-n:]


def _run_bundle(run_id: str, config_file, **override):
    """In-process ``monai.bundle.run`` without applying logging.conf (which would disable pytest's loggers)."""
    from monai.bundle import run

    run(run_id=run_id, config_file=config_file, meta_file=META, logging_file=False, **override)


def _pil(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _chance_dice_ceiling(labels: list[np.ndarray], fovs: list[np.ndarray]) -> float:
    """Highest mean Dice of a prediction that ignores the image: predicting vessel at a rate q inside the FOV
    gives an expected Dice of 2pq / (p + q) <= 2p / (1 + p) (p = vessel fraction), reached by q = 1."""
    values = []
    for lab, fov in zip(labels, fovs):
        p = (lab[fov] > 0).mean()
        values.append(2 * p / (1 + p))
    return float(np.mean(values))


def _reference_metrics(prob: np.ndarray, label: np.ndarray, fov: np.ndarray) -> dict[str, float]:
    """FOV-masked Dice, IoU, Se, Sp, Acc (threshold 0.5) and rank AUC, plain numpy/scipy."""
    from scipy.stats import rankdata

    p, t = (prob > 0.5)[fov], label[fov]
    tp, fp = np.sum(p & t), np.sum(p & ~t)
    tn, fn = np.sum(~p & ~t), np.sum(~p & t)
    ranks = rankdata(prob[fov])
    n_pos, n_neg = t.sum(), (~t).sum()
    auc = (ranks[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return {"dice": 2 * tp / (2 * tp + fp + fn), "iou": tp / (tp + fp + fn), "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp), "accuracy": (tp + tn) / (tp + tn + fp + fn), "auc": float(auc)}


def _reference_probability(net: torch.nn.Module, image_path, fov: np.ndarray, roi_size=(192, 192)) -> np.ndarray:
    """Vessel probability of one fundus image: FOV standardisation written out in numpy, MONAI's own
    ``sliding_window_inference`` (overlap 0.5, Gaussian) over sigmoid-activated windows."""
    from monai.inferers import sliding_window_inference

    img = _pil(image_path).astype(np.float64).transpose(2, 0, 1)  # (3, H, W)
    x = np.zeros_like(img)
    for c in range(3):
        v = img[c][fov]
        x[c][fov] = (v - v.mean()) / v.std()
    net.eval()
    with torch.no_grad():
        out = sliding_window_inference(torch.tensor(x[None], dtype=torch.float32), roi_size, 16,
                                       lambda w: torch.sigmoid(net(w)), overlap=0.5, mode="gaussian")
    return out[0, 0].numpy()


def _load_network(ckpt: Path, features=(16, 32, 64, 128, 256)) -> torch.nn.Module:
    from monai_unetzoo.networks import ResUNet

    net = ResUNet(spatial_dims=2, in_channels=3, out_channels=1, features=features, norm="batch", act="relu")
    net.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    return net


# ---------------------------------------------------------------------------------------------- transforms


def _parser(**override):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.read_meta(META)
    parser.update(override)
    return parser


def test_bundle_preprocessing_matches_numpy(tmp_path):
    """The bundle's loading transforms: PIL axis order, label/FOV binarised with > 0, FOV z-scoring."""
    from monai_unetzoo.data import write_synthetic_drive

    root = write_synthetic_drive(tmp_path / "d", num_training=3, num_test=1, image_size=(60, 76), seed=2)
    label_file = root / "training" / "1st_manual" / "21_manual1.gif"
    lab = _pil(label_file).copy()
    lab[lab > 0] = 1  # a GIF holding 0/1/200: every non-zero value is vessel
    lab[:5, :5] = 200
    Image.fromarray(lab, mode="L").save(label_file, format="GIF", optimize=False)
    parser = _parser(dataset_dir=str(root), output_dir=str(tmp_path / "m"))
    load = parser.get_parsed_content("validate#preprocessing")
    item = {"image": str(root / "training/images/21_training.tif"), "label": str(label_file),
            "roi": str(root / "training/mask/21_training_mask.gif")}
    out = load(item)
    fov = _pil(item["roi"]) > 0
    np.testing.assert_array_equal(out["label"][0].numpy(), (_pil(label_file) > 0).astype(np.float32))
    np.testing.assert_array_equal(out["roi"][0].numpy(), fov.astype(np.float32))
    img = _pil(item["image"]).astype(np.float64)
    for c in range(3):
        v = img[..., c][fov]
        ref = np.where(fov, (img[..., c] - v.mean()) / v.std(), 0.0)
        np.testing.assert_allclose(out["image"][c].numpy(), ref, atol=1e-4)


def test_training_patches_and_cache(tmp_path):
    """Training batches: 2 images x 4 patches, about half of them centred on a vessel pixel (pos:neg = 1:1; the
    background is ~90 % of the FOV); the cache (``copy_cache=False``) is never modified by the random transforms."""
    import hashlib

    from monai_unetzoo.data import write_synthetic_drive

    root = write_synthetic_drive(tmp_path / "d", num_training=4, num_test=1, image_size=(128, 128), seed=4)
    parser = _parser(dataset_dir=str(root), output_dir=str(tmp_path / "m"), num_workers=0, val_fraction=0.25,
                     patch_size=[32, 32])  # small patches: crops are rarely shifted away from their centre
    cache = parser.get_parsed_content("train#cache_dataset")
    loader = parser.get_parsed_content("train#dataloader")

    def digest() -> list[str]:
        arrays = [[np.ascontiguousarray(v).tobytes() for _, v in sorted(item.items())
                   if isinstance(v, (np.ndarray, torch.Tensor))] for item in cache._cache]
        return [hashlib.md5(b"".join(a)).hexdigest() for a in arrays]

    before = digest()
    centre_vessel, n_patches = 0, 0
    for _ in range(3):
        for batch in loader:
            assert tuple(batch["image"].shape) == (8, 3, 32, 32) and type(batch["image"]) is torch.Tensor
            assert set(torch.unique(batch["label"]).tolist()) <= {0.0, 1.0}
            centre_vessel += int(batch["label"][:, 0, 15:17, 15:17].amax(dim=(1, 2)).sum())
            n_patches += batch["label"].shape[0]
    assert digest() == before
    assert n_patches == 3 * (3 * 4 // 2) * 8  # 3 epochs x (3 images x 4 passes / 2 images per batch) x 8 patches
    assert 0.35 < centre_vessel / n_patches < 0.85, centre_vessel / n_patches


# ---------------------------------------------------------------------------------------------- the CLI command


def test_verify_net_in_out_cli():
    proc = _cli("verify_net_in_out", "network_def", "--config_file", TRAIN, "--meta_file", META, "--n", "3",
                "--device", "cpu", timeout=180)
    assert proc.returncode == 0, _tail(proc)
    assert "data shape of network is verified with no error" in proc.stdout + proc.stderr
    # the check can fail: a network with 2 output channels contradicts metadata.json
    from monai.bundle import verify_net_in_out

    with pytest.raises(ValueError, match="output channel number"):
        verify_net_in_out(net_id="network_def", config_file=TRAIN, meta_file=META, device="cpu",
                          **{"network_def#out_channels": 2})


def test_default_command_trains_on_synthetic_data(tmp_path):
    """``python -m monai.bundle run training --config_file bundles/drive/train.json``, shortened by overrides,
    generates the synthetic data set, says so, learns better than chance and leaves checkpoints and a log."""
    out = tmp_path / "models"
    proc = _cli("run", "training", "--config_file", "bundles/drive/train.json", "--output_dir", str(out),
                "--epochs", "2", "--val_interval", "1", "--passes_per_epoch", "6", "--patch_size", "[64,64]",
                "--num_workers", "0", "--num_threads", "1", "--synthetic#num_training", "6",
                "--synthetic#num_test", "1", "--synthetic#image_size", "[128,144]", timeout=600)
    assert proc.returncode == 0, _tail(proc)
    assert "SYNTHETIC DATA" in proc.stdout + proc.stderr
    assert (out / "model.pt").is_file() and (out / "model_last.pt").is_file()
    log = (out / "train_log.txt").read_text()
    assert "SYNTHETIC DATA" in log
    dices = [float(v) for v in re.findall(r"Metrics -- .*val_dice: ([0-9.]+)", log)]
    assert len(dices) == 2, log[-2000:]
    # chance level from the validation labels themselves (split: val_fraction 0.2 of 6 -> 1 image)
    from monai_unetzoo.data import drive_datalists

    val = drive_datalists(out / "synthetic_DRIVE", val_fraction=0.2, seed=0)["validation"]
    labels = [_pil(d["label"]) > 0 for d in val]
    fovs = [_pil(d["roi"]) > 0 for d in val]
    ceiling = _chance_dice_ceiling(labels, fovs)
    assert max(dices) > ceiling + 0.15, (dices, ceiling)
    # the best checkpoint is a ResUNet state dict, last checkpoint holds model/optimizer/scheduler
    _load_network(out / "model.pt")
    last = torch.load(out / "model_last.pt", map_location="cpu", weights_only=False)
    assert {"model", "optimizer", "lr_scheduler"} <= set(last)


def test_explicit_dataset_dir_without_drive_fails(tmp_path):
    (tmp_path / "not_drive").mkdir()
    proc = _cli("run", "training", "--config_file", TRAIN, "--output_dir", str(tmp_path / "m"),
                "--dataset_dir", str(tmp_path / "not_drive"), timeout=180)
    assert proc.returncode == 2  # a data problem, reported without a traceback
    assert "not a DRIVE folder" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m" / "synthetic_DRIVE").exists()  # never a silent fall-back


# ---------------------------------------------------------------------------------------------- real DRIVE


SMALL_NET = [8, 16, 32, 64, 128]  # the recipe's network at half width: these tests check the pipeline, not accuracy
REAL_CASES = ("21", "22")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """Train a few iterations on two real training images (23, 24), validating on 21 and 22; then compute the
    reference probabilities of 21 and 22 independently of the bundle."""
    from conftest import require_data

    drive = require_data("DRIVE")
    out = tmp_path_factory.mktemp("drive_real")
    # autocast "fp32": no autocast, so that the bundle's probabilities can be held to 1e-4 against the fp32
    # reference below (bf16, the CPU default, is covered by tests/test_autocast_training.py and the default run).
    common = {"dataset_dir": str(drive), "output_dir": str(out / "models"), "val_case_ids": list(REAL_CASES),
              "autocast": "fp32", "num_workers": 0, "num_threads": torch.get_num_threads(), "network_def#features": SMALL_NET}
    _run_bundle("training", TRAIN, epochs=1, val_interval=1, passes_per_epoch=2, images_per_batch=2,
                patches_per_image=4, train_datalist="$@datalists['training'][:2]", **common)
    net = _load_network(out / "models" / "model.pt", features=SMALL_NET)
    refs = {}
    for cid in REAL_CASES:
        fov = _pil(drive / "training" / "mask" / f"{cid}_training_mask.gif") > 0
        label = _pil(drive / "training" / "1st_manual" / f"{cid}_manual1.gif") > 0
        prob = _reference_probability(net, drive / "training" / "images" / f"{cid}_training.tif", fov)
        refs[cid] = {"fov": fov, "label": label, "prob": prob}
    return drive, out, common, refs


def test_real_drive_training_and_evaluation(real_run):
    drive, out, common, refs = real_run
    models = out / "models"
    assert (models / "model.pt").is_file() and (models / "model_last.pt").is_file()
    log = (models / "train_log.txt").read_text()
    assert "SYNTHETIC" not in log and len(re.findall(r"val_dice: ([0-9.]+)", log)) == 1

    eval_dir = out / "eval"
    _run_bundle("evaluating", [TRAIN, EVALUATE], split="validation", eval_dir=str(eval_dir), **common)
    summary = json.loads((eval_dir / "metrics_validation.json").read_text())
    assert summary["cases"] == list(REAL_CASES) and summary["num_images"] == 2
    rows = (eval_dir / "metrics_validation_per_image.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    assert header == ["case", "dice", "iou", "sensitivity", "specificity", "accuracy", "auc"]
    assert rows[1].split(",")[0].endswith("21_training.tif")

    expected = []
    for i, cid in enumerate(REAL_CASES):
        ref = _reference_metrics(refs[cid]["prob"], refs[cid]["label"], refs[cid]["fov"])
        expected.append(ref)
        csv_values = dict(zip(header[1:], map(float, rows[i + 1].split(",")[1:])))
        for name, value in ref.items():
            assert summary["per_image"][name][i] == pytest.approx(value, abs=2e-3), (cid, name)
            assert csv_values[name] == pytest.approx(value, abs=2e-3), (cid, name)
    for name in expected[0]:
        assert summary["mean"][name] == pytest.approx(np.mean([r[name] for r in expected]), abs=2e-3)

    # the public test split has no labels: a clear error, not a crash deep inside the evaluator
    if not (drive / "test" / "1st_manual").is_dir():
        with pytest.raises(Exception) as err:
            _run_bundle("evaluating", [TRAIN, EVALUATE], split="test", eval_dir=str(eval_dir), **common)
        chain, exc = [], err.value
        while exc is not None:  # MONAI's config resolver wraps our DriveDatasetError
            chain.append(f"{type(exc).__name__}: {exc}")
            exc = exc.__cause__
        assert any("DriveDatasetError" in c and "no vessel annotation" in c for c in chain), chain


def test_real_drive_inference(real_run, tmp_path):
    """run inferring on real photographs: 0/255 vessel masks (TIFF in, TIFF out) of the photograph's size, the
    field of view estimated from the image, agreeing with the independent fp32 reference inside DRIVE's own FOV."""
    from scipy.ndimage import binary_dilation

    drive, out, common, refs = real_run
    images = tmp_path / "images"
    images.mkdir()
    for cid in REAL_CASES:  # links only: the data never gets copied
        (images / f"{cid}_training.tif").symlink_to(drive / "training" / "images" / f"{cid}_training.tif")
    pred_dir = tmp_path / "pred"
    _run_bundle("inferring", INFERENCE, input_dir=str(images), infer_dir=str(pred_dir),
                ckpt_path=str(out / "models" / "model.pt"),
                **{k: v for k, v in common.items() if k in ("dataset_dir", "autocast", "network_def#features")})
    for cid in REAL_CASES:
        fov, ref = refs[cid]["fov"], refs[cid]["prob"]
        vessels = _pil(pred_dir / f"{cid}_training_seg.tif")
        assert vessels.shape == fov.shape == (584, 565)  # PIL's (H, W), not transposed
        assert set(np.unique(vessels)) <= {0, 255}
        assert not vessels[~binary_dilation(fov, iterations=5)].any()  # nothing on the black surround
        # the estimated FOV standardises intensities with slightly other statistics than DRIVE's mask
        agree = ((vessels > 0) == (ref > 0.5))[fov].mean()
        assert agree > 0.99, agree
