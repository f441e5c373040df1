"""DRIVE data layer: datalists and their errors, the split, PIL axis order, the synthetic generator, our transforms.

References are independent of the code under test: file names are spelled out, arrays come from
``numpy.asarray(PIL.Image.open(f))``, statistics from plain numpy.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monai_unetzoo.data import (
    DRIVE_LOADER_KWARGS,
    SYNTHETIC_MARKER,
    DriveDatasetError,
    build_drive_datalist,
    draw_synthetic_fundus,
    drive_datalists,
    inference_datalist,
    resolve_drive_dataset_dir,
    split_drive_cases,
    write_synthetic_drive,
)
from monai_unetzoo.transforms import EstimateFovMaskd, FovClaheEqualized, FovStandardizeIntensityd

SMALL = (72, 88)  # (H, W): non-square, so a swapped axis order cannot go unnoticed


@pytest.fixture(scope="module")
def small_drive(tmp_path_factory) -> Path:
    return write_synthetic_drive(tmp_path_factory.mktemp("syn") / "DRIVE", num_training=5, num_test=2,
                                 image_size=SMALL, seed=3)


def _copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _pil(path) -> np.ndarray:
    return np.asarray(Image.open(path))


# ---------------------------------------------------------------- datalists


def test_real_drive_datalist(drive_dir):
    train = build_drive_datalist(drive_dir, "training")
    assert [d["case_id"] for d in train] == [str(i) for i in range(21, 41)]
    assert train[0] == {
        "image": str(drive_dir / "training" / "images" / "21_training.tif"),
        "label": str(drive_dir / "training" / "1st_manual" / "21_manual1.gif"),
        "roi": str(drive_dir / "training" / "mask" / "21_training_mask.gif"),
        "case_id": "21",
    }
    test = build_drive_datalist(drive_dir, "test")
    assert [d["case_id"] for d in test] == [f"{i:02d}" for i in range(1, 21)]
    has_test_labels = (drive_dir / "test" / "1st_manual").is_dir()
    assert ("label" in test[0]) == has_test_labels
    assert test[0]["roi"] == str(drive_dir / "test" / "mask" / "01_test_mask.gif")
    lists = drive_datalists(drive_dir, val_fraction=0.2, seed=0)
    assert len(lists["training"]) == 16 and len(lists["validation"]) == 4 and len(lists["test"]) == 20


def test_missing_files_are_all_listed_in_one_error(small_drive, tmp_path):
    root = _copy_tree(small_drive, tmp_path / "DRIVE")
    gone = [root / "training" / "1st_manual" / "22_manual1.gif", root / "training" / "mask" / "24_training_mask.gif",
            root / "training" / "1st_manual" / "25_manual1.gif"]
    for p in gone:
        p.unlink()
    with pytest.raises(DriveDatasetError) as err:
        build_drive_datalist(root, "training")
    msg = str(err.value)
    for p in gone:
        assert str(p) in msg
    assert "3 problem(s)" in msg and "missing label file" in msg and "missing roi file" in msg
    assert "21_manual1.gif" not in msg  # files that are there are not reported


def test_not_a_drive_folder(tmp_path):
    with pytest.raises(DriveDatasetError, match="does not exist"):
        build_drive_datalist(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DriveDatasetError, match=r"not a DRIVE folder.*training/images/\*_training\.tif"):
        build_drive_datalist(tmp_path / "empty")


def test_malformed_files_are_reported(small_drive, tmp_path):
    root = _copy_tree(small_drive, tmp_path / "DRIVE")
    bad_tif = root / "training" / "images" / "23_training.tif"
    bad_tif.write_bytes(b"II*\x00 this is not a TIFF")
    # a label of the wrong size
    Image.fromarray(np.zeros((10, 12), np.uint8), mode="L").save(root / "training" / "1st_manual" / "21_manual1.gif")
    # a colour image where a binary FOV mask belongs (PNG content under the .gif name: PIL reads by content)
    Image.fromarray(np.zeros((*SMALL, 3), np.uint8), mode="RGB").save(
        root / "training" / "mask" / "24_training_mask.gif", format="PNG")
    with pytest.raises(DriveDatasetError) as err:
        build_drive_datalist(root, "training")
    msg = str(err.value)
    assert f"{bad_tif}: cannot be read as an image" in msg
    assert "case 21" in msg and "sizes differ" in msg and "label 10x12" in msg
    assert "24_training_mask.gif: expected a single-channel binary roi image, got PIL mode 'RGB'" in msg
    assert "3 problem(s)" in msg
    # validate=False only checks presence
    assert len(build_drive_datalist(root, "training", validate=False)) == 5


def test_split_is_deterministic_and_configurable():
    items = [{"image": f"{i}.tif", "case_id": str(i)} for i in range(21, 41)]
    train, val = split_drive_cases(items, val_fraction=0.2, seed=0)
    train2, val2 = split_drive_cases(list(reversed(items)), val_fraction=0.2, seed=0)
    assert (train, val) == (train2, val2)  # independent of the input order
    assert len(val) == 4 and len(train) == 16
    assert {d["case_id"] for d in train} | {d["case_id"] for d in val} == {str(i) for i in range(21, 41)}
    assert not {d["case_id"] for d in train} & {d["case_id"] for d in val}
    # reference: the documented rule, spelled out with numpy
    expected = sorted(str(21 + i) for i in np.random.default_rng(0).permutation(20)[:4])
    assert [d["case_id"] for d in val] == expected
    assert [d["case_id"] for d in split_drive_cases(items, seed=1)[1]] != expected
    assert len(split_drive_cases(items, num_val=5)[1]) == 5
    _, val_ids = split_drive_cases(items, val_case_ids=[21, "40"])
    assert [d["case_id"] for d in val_ids] == ["21", "40"]
    with pytest.raises(ValueError, match="not in the datalist"):
        split_drive_cases(items, val_case_ids=["99"])
    with pytest.raises(ValueError, match="num_val"):
        split_drive_cases(items, num_val=20)


# ---------------------------------------------------------------- axis order (PIL vs MONAI)


def _load(path, **kw):
    from monai.transforms import LoadImage

    return LoadImage(image_only=True, **kw)(str(path))


def _assert_matches_pil(path):
    ref = _pil(path)
    ref = ref.transpose(2, 0, 1) if ref.ndim == 3 else ref[None]  # channel-first (C, H, W)
    ours = _load(path, **DRIVE_LOADER_KWARGS)
    assert tuple(ours.shape) == ref.shape
    np.testing.assert_array_equal(ours.numpy(), ref.astype(np.float32))
    return ours


def test_axis_order_matches_pil_synthetic(small_drive):
    for rel in ("training/images/21_training.tif", "training/1st_manual/21_manual1.gif",
                "training/mask/21_training_mask.gif"):
        assert tuple(_assert_matches_pil(small_drive / rel).shape[1:]) == SMALL
    # MONAI's default PILReader swaps the axes; this is what the test guards against
    swapped = _load(small_drive / "training/images/21_training.tif", reader="PILReader", ensure_channel_first=True)
    assert tuple(swapped.shape[1:]) == SMALL[::-1]


def test_axis_order_matches_pil_real_drive(drive_dir):
    for rel in ("training/images/21_training.tif", "training/1st_manual/21_manual1.gif",
                "training/mask/21_training_mask.gif", "test/images/01_test.tif", "test/mask/01_test_mask.gif"):
        ours = _assert_matches_pil(drive_dir / rel)
        assert tuple(ours.shape[1:]) == (584, 565)


# ---------------------------------------------------------------- synthetic data


def test_synthetic_drive_layout_and_content(small_drive):
    lists = drive_datalists(small_drive, num_val=1)  # validates every file
    assert [d["case_id"] for d in lists["all_training"]] == ["21", "22", "23", "24", "25"]
    assert [d["case_id"] for d in lists["test"]] == ["01", "02"] and "label" in lists["test"][0]
    for item in lists["all_training"]:
        img, lab, fov = _pil(item["image"]), _pil(item["label"]), _pil(item["roi"])
        assert img.shape == (*SMALL, 3) and img.dtype == np.uint8
        assert set(np.unique(lab)) <= {0, 255} and set(np.unique(fov)) == {0, 255}
        assert not (lab[fov == 0]).any()  # vessels only inside the FOV
        frac = (lab[fov > 0] > 0).mean()
        assert 0.02 < frac < 0.3, frac  # DRIVE: ~12 % of the FOV is vessel
        # vessels are darker than the rest of the FOV in the green channel
        g = img[..., 1].astype(float)
        assert g[(lab > 0)].mean() < g[(lab == 0) & (fov > 0)].mean() - 5
        assert img[fov == 0].max() <= 3  # black surround, as DRIVE
    meta = json.loads((small_drive / SYNTHETIC_MARKER).read_text())
    assert meta["image_size"] == list(SMALL) and meta["seed"] == 3


def test_synthetic_is_deterministic_and_reused(tmp_path):
    a = draw_synthetic_fundus((64, 64), seed=5)
    b = draw_synthetic_fundus((64, 64), seed=5)
    c = draw_synthetic_fundus((64, 64), seed=6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], c[1])
    root = write_synthetic_drive(tmp_path / "d", num_training=2, num_test=1, image_size=(48, 48), seed=1)
    f = root / "training" / "images" / "21_training.tif"
    stamp = f.stat().st_mtime_ns
    write_synthetic_drive(tmp_path / "d", num_training=2, num_test=1, image_size=(48, 48), seed=1)
    assert f.stat().st_mtime_ns == stamp  # same parameters: reused, not rewritten
    write_synthetic_drive(tmp_path / "d", num_training=3, num_test=1, image_size=(48, 48), seed=1)
    assert len(build_drive_datalist(root)) == 3  # other parameters: regenerated
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "precious.txt").write_text("x")
    with pytest.raises(FileExistsError, match="refusing"):
        write_synthetic_drive(tmp_path / "real")


def test_resolve_dataset_dir(tmp_path, caplog, small_drive):
    with caplog.at_level(logging.WARNING):
        out = resolve_drive_dataset_dir("synthetic", tmp_path / "syn", num_training=2, num_test=1, image_size=(40, 40))
    assert Path(out) == (tmp_path / "syn").resolve() and (Path(out) / SYNTHETIC_MARKER).is_file()
    assert "SYNTHETIC DATA" in caplog.text
    # an explicit folder that is not DRIVE: a clear error and no synthetic fall-back
    (tmp_path / "notdrive").mkdir()
    with pytest.raises(DriveDatasetError, match="not a DRIVE folder"):
        resolve_drive_dataset_dir(tmp_path / "notdrive", tmp_path / "syn2")
    assert not (tmp_path / "syn2").exists()
    assert resolve_drive_dataset_dir(str(small_drive), tmp_path / "syn3") == str(small_drive.resolve())


def test_inference_datalist(small_drive, tmp_path):
    items = inference_datalist(small_drive / "test" / "images", small_drive / "test" / "mask")
    assert [(Path(d["image"]).name, Path(d["roi"]).name) for d in items] == [
        ("01_test.tif", "01_test_mask.gif"), ("02_test.tif", "02_test_mask.gif")]
    assert all("roi" not in d for d in inference_datalist(small_drive / "test" / "images"))
    masks = _copy_tree(small_drive / "test" / "mask", tmp_path / "masks")
    (masks / "02_test_mask.gif").unlink()
    with pytest.raises(DriveDatasetError, match=r"02_test\.tif"):
        inference_datalist(small_drive / "test" / "images", masks)


# ---------------------------------------------------------------- our transforms


def test_fov_standardize_matches_numpy():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (3, 20, 24)).astype(np.float32)
    mask = np.zeros((1, 20, 24), np.float32)
    mask[0, 3:17, 4:20] = 1
    out = FovStandardizeIntensityd("image", mask_key="roi")({"image": torch.tensor(img), "roi": torch.tensor(mask)})
    out = out["image"].numpy()
    m = mask[0] > 0
    for c in range(3):
        ref = (img[c] - img[c][m].mean()) / img[c][m].std()
        np.testing.assert_allclose(out[c][m], ref[m], rtol=1e-4, atol=1e-4)
        assert (out[c][~m] == 0).all()
    joint = FovStandardizeIntensityd("image", channel_wise=False)({"image": torch.tensor(img)})["image"].numpy()
    np.testing.assert_allclose(joint, (img - img.mean()) / img.std(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="spatial shape"):
        FovStandardizeIntensityd("image")({"image": torch.tensor(img), "roi": torch.ones(1, 5, 5)})


def _fov_dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_estimate_fov_mask_synthetic(small_drive):
    from monai.transforms import LoadImaged

    load = LoadImaged(["image", "roi"], **DRIVE_LOADER_KWARGS)
    for cid in ("21", "22", "23"):
        d = load({"image": str(small_drive / f"training/images/{cid}_training.tif"),
                  "roi": str(small_drive / f"training/mask/{cid}_training_mask.gif")})
        est = EstimateFovMaskd("fov")(d)["fov"]
        assert tuple(est.shape) == (1, *SMALL)
        assert _fov_dice(est[0].numpy() > 0, _pil(small_drive / f"training/mask/{cid}_training_mask.gif") > 0) > 0.97
        # an item that has its mask keeps it
        kept = EstimateFovMaskd("roi", threshold=1000)(d)["roi"]  # (this threshold would fail if it estimated)
        np.testing.assert_array_equal(kept.numpy(), d["roi"].numpy())
    with pytest.raises(ValueError, match="no voxel"):
        EstimateFovMaskd("fov", threshold=1000)(d)


def test_estimate_fov_mask_real_drive(drive_dir):
    from monai.transforms import LoadImaged

    load = LoadImaged(["image", "roi"], **DRIVE_LOADER_KWARGS)
    for rel_img, rel_mask in (("training/images/21_training.tif", "training/mask/21_training_mask.gif"),
                              ("test/images/07_test.tif", "test/mask/07_test_mask.gif")):
        d = load({"image": str(drive_dir / rel_img), "roi": str(drive_dir / rel_mask)})
        est = EstimateFovMaskd("fov")(d)["fov"][0].numpy() > 0
        dice = _fov_dice(est, _pil(drive_dir / rel_mask) > 0)
        assert dice > 0.99, dice


def _global_equalization(channel: np.ndarray) -> np.ndarray:
    """numpy reference: histogram equalisation of an 8-bit (H, W) image, ``lut[i] = 255 * cdf(i)`` rounded half to
    even, which is CLAHE with one tile and no clipping."""
    counts = np.bincount(channel.ravel(), minlength=256)
    lut = np.rint(np.cumsum(counts) * (255.0 / channel.size)).clip(0, 255)
    return lut[channel]


@pytest.mark.parametrize("channel", ["green", "luminance", "each"])
def test_fov_clahe_matches_numpy_equalization_inside_the_fov(channel):
    pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    rgb = rng.integers(30, 220, size=(3, 40, 48)).astype(np.float32)
    fov = np.zeros((40, 48), dtype=bool)
    fov[5:35, 6:40] = True
    rgb[:, ~fov] = rng.integers(0, 8, size=(3, int((~fov).sum())))  # a dark surround
    # a luminance of exactly k + 0.5 rounds either way depending on the float path: move those pixels off the tie
    tie = (299 * rgb[0] + 587 * rgb[1] + 114 * rgb[2]) % 1000 == 500
    rgb[0][tie] += 1
    t = FovClaheEqualized("image", channel=channel, clip_limit=1e4, tile_grid=1)  # one tile, no clipping
    out = t({"image": torch.tensor(rgb), "roi": torch.tensor(fov[None].astype(np.float32))})["image"].numpy()
    r, g, b = rgb.astype(np.float64)
    mixes = {"green": rgb[1:2], "luminance": (0.299 * r + 0.587 * g + 0.114 * b)[None], "each": rgb}
    expected = []
    for mix in mixes[channel]:
        filled = np.clip(np.rint(np.where(fov, mix, mix[fov].mean())), 0, 255).astype(np.uint8)
        expected.append(np.where(fov, _global_equalization(filled), 0))
    assert out.shape == (len(expected), 40, 48) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.stack(expected))


def test_fov_clahe_ignores_the_surround_and_reports_bad_input():
    pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    rgb = rng.integers(40, 200, size=(3, 64, 64)).astype(np.float32)
    fov = np.zeros((1, 64, 64), dtype=np.float32)
    fov[0, 8:56, 8:56] = 1
    t = FovClaheEqualized("image")  # OpenCV's 8 x 8 tiles, clip limit 2
    black, white = rgb.copy(), rgb.copy()
    black[:, fov[0] == 0], white[:, fov[0] == 0] = 0, 255
    a = t({"image": torch.tensor(black), "roi": torch.tensor(fov)})["image"].numpy()
    b = t({"image": torch.tensor(white), "roi": torch.tensor(fov)})["image"].numpy()
    np.testing.assert_array_equal(a, b)  # the rim tiles see the FOV mean, not the surround
    assert a[0, fov[0] == 0].max() == 0 and a[0, fov[0] > 0].std() > 10
    with pytest.raises(ValueError, match="RGB"):
        t({"image": torch.zeros(1, 8, 8)})
    with pytest.raises(ValueError, match="empty"):
        t({"image": torch.tensor(rgb), "roi": torch.zeros(1, 64, 64)})
