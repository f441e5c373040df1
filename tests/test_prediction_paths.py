"""One prediction path, proven on each real bundle with its real data (issue 13).

Each repository bundle is trained for a few iterations on its real data (``../shared/data``: DRIVE TIFF photographs
with GIF masks, Task04 NIfTI volumes) through the documented command, ``python -m monai.bundle run training``, with
fewer epochs than its validation interval (so the last epoch must still validate and write ``model.pt``). Then the
documented ``unetzoo predict`` console script and ``python -m monai.bundle run inferring`` predict the same real
inputs from that checkpoint: every case ok, the two outputs byte-identical, each on its input's grid (read back with
SimpleITK and nibabel), DRIVE masks 0/255 and of the photograph's size.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
UNETZOO = shutil.which("unetzoo", path=str(Path(sys.executable).parent)) or "unetzoo"
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")


def run(cmd: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def bundle_command(run_id: str, bundle: str, config: str, *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file",
                str(REPO / "bundles" / bundle / config), *args])


def read_summary(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def link_inputs(folder: Path, files: list[Path]) -> Path:
    """A folder of symlinks to real inputs: the data is never copied."""
    folder.mkdir(parents=True)
    for f in files:
        (folder / f.name).symlink_to(f)
    return folder


def assert_same_itk_grid(seg_path: Path, src_path: Path) -> None:
    seg, src = sitk.ReadImage(str(seg_path)), sitk.ReadImage(str(src_path))
    assert seg.GetSize() == src.GetSize()[: seg.GetDimension()]
    np.testing.assert_allclose(seg.GetSpacing(), src.GetSpacing()[: seg.GetDimension()], rtol=0, atol=1e-6)
    np.testing.assert_allclose(seg.GetOrigin(), src.GetOrigin()[: seg.GetDimension()], rtol=0, atol=1e-6)
    np.testing.assert_allclose(seg.GetDirection(), src.GetDirection(), rtol=0, atol=1e-6)


def predict_both_ways(bundle: str, ckpt: Path, files: list[Path], tmp: Path, suffix: str) -> tuple[Path, list]:
    """The CLI and the bundle's own inference on the same real inputs and checkpoint: every case ok and the two
    segmentations byte-identical. Returns the CLI's output folder and its summary rows."""
    inputs = link_inputs(tmp / "in", files)
    cli_out, bundle_out = tmp / "cli", tmp / "bundle"
    run([UNETZOO, "predict", "--bundle", str(REPO / "bundles" / bundle), "--checkpoint", str(ckpt), "--input",
         str(inputs), "--output", str(cli_out), "--quiet"])
    bundle_command("inferring", bundle, "inference.json", "--ckpt_path", str(ckpt), "--input_dir", str(inputs),
                   "--infer_dir", str(bundle_out))
    rows = read_summary(cli_out / "summary.csv")
    assert [r["status"] for r in rows] == ["ok"] * len(files), rows
    for src in files:
        name = src.name.replace(suffix, "_seg" + suffix)
        assert (cli_out / name).read_bytes() == (bundle_out / name).read_bytes(), f"{name}: the two paths differ"
    return cli_out, rows


@pytest.fixture(scope="module")
def hippocampus_model(tmp_path_factory) -> Path:
    from conftest import require_data

    data = require_data("Task04_Hippocampus")
    out = tmp_path_factory.mktemp("hippo_train")
    bundle_command("training", "hippocampus", "train.json", "--dataset_dir", str(data), "--output_dir", str(out),
                   "--num_train_cases", "4", "--num_val_cases", "2", "--epochs", "1", "--val_interval", "10")
    return out / "model.pt"


@pytest.fixture(scope="module")
def drive_model(tmp_path_factory) -> Path:
    from conftest import require_data

    data = require_data("DRIVE")
    out = tmp_path_factory.mktemp("drive_train")
    bundle_command("training", "drive", "train.json", "--dataset_dir", str(data), "--output_dir", str(out),
                   "--epochs", "1", "--val_interval", "10", "--passes_per_epoch", "1", "--num_workers", "0",
                   "--val_case_ids", "['21', '22']", "--train_datalist", "$@datalists['training'][:2]")
    return out / "model.pt"


@pytest.mark.real_data
def test_short_training_still_leaves_model_pt(hippocampus_model, drive_model):
    """epochs (1) < val_interval (10): the last epoch is validated, so the best-metric model.pt exists."""
    import torch

    for ckpt in (hippocampus_model, drive_model):
        assert ckpt.is_file(), ckpt
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        assert state and all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.real_data
def test_hippocampus_cli_and_bundle_inference_agree_on_real_volumes(hippocampus_model, hippocampus_dir, tmp_path):
    files = sorted((hippocampus_dir / "imagesTr").glob("hippocampus_*.nii.gz"))[:3]
    cli_out, rows = predict_both_ways("hippocampus", hippocampus_model, files, tmp_path, ".nii.gz")
    for src in files:
        name = src.name.replace(".nii.gz", "_seg.nii.gz")
        seg, img = nib.load(cli_out / name), nib.load(src)
        assert seg.shape == img.shape
        np.testing.assert_array_equal(seg.affine, img.affine)
        assert (int(seg.header["qform_code"]), int(seg.header["sform_code"])) == (
            int(img.header["qform_code"]), int(img.header["sform_code"]))
        labels = np.asarray(seg.dataobj)
        assert set(np.unique(labels)) <= {0, 1, 2}
        assert_same_itk_grid(cli_out / name, src)
        row = next(r for r in rows if r["case"] == src.name)
        # volumes and intensities in the summary against numpy on the written label map and the raw image
        image = np.asarray(img.dataobj, dtype=np.float64)
        for value, base in ((1, "anterior_hippocampus"), (2, "posterior_hippocampus")):
            inside = labels == value
            assert int(row[f"{base}_voxels"]) == int(inside.sum())
            voxel_mm3 = float(np.prod(img.header.get_zooms()[:3]))
            assert float(row[f"{base}_mL"]) == pytest.approx(inside.sum() * voxel_mm3 / 1000, rel=1e-5)
            if inside.any():
                assert float(row[f"{base}_intensity_mean"]) == pytest.approx(image[inside].mean(), rel=1e-5)


@pytest.mark.real_data
def test_drive_cli_and_bundle_inference_agree_on_real_test_images(drive_model, drive_dir, tmp_path):
    files = sorted((drive_dir / "test" / "images").glob("*.tif"))[:2]
    cli_out, rows = predict_both_ways("drive", drive_model, files, tmp_path, ".tif")
    import tifffile

    for src in files:
        name = src.name.replace(".tif", "_seg.tif")
        seg = tifffile.imread(cli_out / name)
        photo = np.asarray(Image.open(src))
        assert seg.shape == photo.shape[:2] == (584, 565)
        assert seg.dtype == np.uint8 and set(np.unique(seg)) <= {0, 255}
        mask = np.asarray(Image.open(drive_dir / "test" / "mask" / src.name.replace(".tif", "_mask.gif"))) > 0
        # the field of view is estimated from the photograph (as for any clinician's image): nothing on the black
        # surround beyond a few pixels of DRIVE's own mask
        from scipy.ndimage import binary_dilation

        assert not seg[~binary_dilation(mask, iterations=5)].any()
        row = next(r for r in rows if r["case"] == src.name)
        assert int(row["vessel_pixels"]) == int((seg > 0).sum())
        assert row["spacing"] == "" and row["vessel_mm2"] == ""  # DRIVE's XResolution 0/1: no physical size


def _write_tiff(path: Path, resolution, unit) -> np.ndarray:
    import tifffile

    rgb = np.zeros((12, 10, 3), np.uint8)
    rgb[3:9, 2:7] = (200, 120, 60)
    kwargs = {} if resolution is None else {"resolution": resolution, "resolutionunit": unit}
    tifffile.imwrite(path, rgb, photometric="rgb", **kwargs)
    return rgb


@pytest.mark.parametrize(
    "resolution, unit",
    [(((0, 1), (0, 1)), 2), (None, None), (((300, 1), (150, 1)), 2), (((40, 1), (80, 1)), 3), (((72, 1), (72, 1)), 1),
     (((10**9, 1), (10**9, 1)), 3)],
    ids=["zero_as_in_DRIVE", "missing", "inch", "centimetre", "no_unit", "absurd"],
)
def test_tiff_resolution_tags_against_tifffile(tmp_path, resolution, unit):
    """Pixel size from TIFF tags read back with tifffile: inch = 25.4 mm, cm = 10 mm per unit; 0/1, missing tags,
    unit "none" and absurd values mean "no physical spacing" (pixels), never a crash."""
    import tifffile
    from monai.data import PILReader

    from monai_unetzoo.volume_io import TIFF_PLAUSIBLE_PIXEL_MM, load_scan

    path = tmp_path / "photo.tif"
    _write_tiff(path, resolution, unit)
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        xres, yres = tags["XResolution"].value, tags["YResolution"].value
        unit_read = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 2
    per_unit = {2: 25.4, 3: 10.0}.get(int(unit_read))
    expected = None
    if per_unit and xres[0] > 0 and yres[0] > 0:
        size = (per_unit * xres[1] / xres[0], per_unit * yres[1] / yres[0])
        if all(TIFF_PLAUSIBLE_PIXEL_MM[0] <= s <= TIFF_PLAUSIBLE_PIXEL_MM[1] for s in size):
            expected = size
    image, grid = load_scan(path, raster_reader=PILReader(reverse_indexing=False))  # as the DRIVE bundle reads
    assert tuple(image.shape) == (3, 12, 10)
    assert grid.physical == (expected is not None)
    if expected is not None:  # (H, W) axes: y first
        np.testing.assert_allclose(grid.spacing, (expected[1], expected[0]), rtol=1e-9)
    else:
        assert grid.spacing == (1.0, 1.0)
    if resolution == ((300, 1), (150, 1)):
        assert expected == pytest.approx((25.4 / 300, 25.4 / 150))


def test_help_imports_neither_torch_nor_monai():
    code = (
        "import sys, unetzoo_cli\n"
        "try:\n    unetzoo_cli.main(['predict', '--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "heavy = sorted(m for m in ('torch', 'monai', 'numpy', 'monai_unetzoo') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", errors="replace", cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--precision" in proc.stdout and "--threads" in proc.stdout
    assert "HEAVY []" in proc.stdout, proc.stdout
    console = subprocess.run([UNETZOO, "--help"], capture_output=True, encoding="utf-8", errors="replace", timeout=120)
    assert console.returncode == 0 and "predict" in console.stdout


@pytest.mark.real_data
def test_dry_run_writes_nothing_and_damaged_checkpoint_is_a_usage_error(hippocampus_model, hippocampus_dir, tmp_path):
    src = sorted((hippocampus_dir / "imagesTr").glob("hippocampus_*.nii.gz"))[0]
    out = tmp_path / "never_created"
    proc = subprocess.run([UNETZOO, "predict", "--bundle", str(REPO / "bundles" / "hippocampus"), "--checkpoint",
                           str(hippocampus_model), "--input", str(src), "--output", str(out), "--dry-run"],
                          capture_output=True, encoding="utf-8", errors="replace", env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert str(out / src.name.replace(".nii.gz", "_seg.nii.gz")) in proc.stdout
    assert not out.exists()
    truncated = tmp_path / "model.pt"
    truncated.write_bytes(hippocampus_model.read_bytes()[:1000])
    proc = subprocess.run([UNETZOO, "predict", "--bundle", str(REPO / "bundles" / "hippocampus"), "--checkpoint",
                           str(truncated), "--input", str(src), "--output", str(tmp_path / "o")],
                          capture_output=True, encoding="utf-8", errors="replace", env=ENV, timeout=300)
    assert proc.returncode == 2
    assert f"{truncated}: truncated or corrupt checkpoint" in proc.stderr


@pytest.mark.real_data
def test_cli_tta_matches_the_bundle_evaluation_with_tta(hippocampus_dir, tmp_path):
    """Issue 22: ``unetzoo predict --tta`` mirrors over the axes the bundle was trained with (``mirror_axes``,
    left-right for Task04), in the orientation it was trained in, exactly as the bundle's own evaluation does
    (``run evaluating``, ``tta_axes [0]``). On real validation volumes the two label maps agree; without TTA
    they do not (so the agreement is about the mirroring). A seeded, untrained network makes label maps with
    foreground everywhere, which the mirroring changes a lot: wrong axes cannot agree by accident."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / "hippocampus" / "train.json"))
    parser["bundle_root"] = str(REPO / "bundles" / "hippocampus")
    parser.get_parsed_content("imports")
    torch.manual_seed(0)
    ckpt = tmp_path / "seed0.pt"
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)
    out = tmp_path / "eval_run"
    configs = [str(REPO / "bundles" / "hippocampus" / name) for name in ("train.json", "evaluate.json")]
    run([sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file", str(configs), "--dataset_dir",
         str(hippocampus_dir), "--output_dir", str(out), "--ckpt_path", str(ckpt), "--num_val_cases", "3",
         "--num_workers", "0"])
    evaluated = sorted((out / "eval" / "predictions").glob("*_seg.nii.gz"))
    assert len(evaluated) == 3
    sources = [hippocampus_dir / "imagesTr" / p.name.replace("_seg", "") for p in evaluated]
    inputs = link_inputs(tmp_path / "in", sources)
    for flag in ("--tta", "--no-tta"):
        run([UNETZOO, "predict", "--bundle", str(REPO / "bundles" / "hippocampus"), "--checkpoint", str(ckpt),
             "--input", str(inputs), "--output", str(tmp_path / flag), flag, "--quiet"])
    for ref in evaluated:
        want = np.asarray(nib.load(ref).dataobj)
        with_tta, without = (np.asarray(nib.load(tmp_path / flag / ref.name).dataobj) for flag in ("--tta", "--no-tta"))
        assert want.shape == with_tta.shape and 0.05 < (want > 0).mean() < 0.95  # a non-trivial map
        assert (with_tta == want).mean() >= 0.999, ref.name
        assert (without == want).mean() < 0.99, ref.name
