"""``unetzoo predict``: batch prediction for clinicians, nothing lost (issue 6).

The bundles here are small fake MONAI bundles written by the tests (metadata.json + inference.json + a network
module + models/model.pt), following the contract in :mod:`monai_unetzoo.predict`: an identity "network" (the
one-hot of the input's label values), a slow variant for the SIGTERM test, and a tiny real UNet whose checkpoint
must actually be loaded.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image
from test_volume_io import ROT, label_map, write_dicom_series

from monai_unetzoo.cli import main
from monai_unetzoo.inference import channels_last_network

REPO = Path(__file__).resolve().parents[1]

FAKE_NETS = '''
import time
import torch


class OneHotOfInput(torch.nn.Module):
    """Identity "network": logits whose argmax is the (rounded) value of input channel 0."""

    def __init__(self, num_classes=3, delay=0.0):
        super().__init__()
        self.num_classes, self.delay = num_classes, delay

    def forward(self, x):
        if self.delay:
            time.sleep(self.delay)
        lab = x[:, 0].round().clamp(0, self.num_classes - 1).long()
        return torch.nn.functional.one_hot(lab, self.num_classes).movedim(-1, 1).float() * 10.0


class BrightRoid:
    """Adds "roi": where the brightest channel of the image exceeds ``threshold`` (a field of view)."""

    def __init__(self, threshold=20.0):
        self.threshold = threshold

    def __call__(self, data):
        d = dict(data)
        d["roi"] = (d["image"].amax(0, keepdim=True) > self.threshold).float()
        return d
'''


def make_bundle(
    root: Path,
    *,
    network: dict | None = None,
    spatial_dims: int = 3,
    in_channels: int = 1,
    channel_def: dict | None = None,
    preprocessing: list | None = None,
    roi_size: list | None = None,
    state_dict: dict | None = None,
    name: str = "fake",
    extra: dict | None = None,
) -> Path:
    """A flat MONAI bundle the CLI can run (see the contract in monai_unetzoo.predict)."""
    root.mkdir(parents=True)
    (root / "unetzoo_fake_nets.py").write_text(FAKE_NETS)
    channel_def = channel_def or {"0": "background", "1": "anterior", "2": "posterior"}
    meta = {
        "name": name,
        "version": "0.0.1",
        "network_data_format": {
            "inputs": {"image": {"num_channels": in_channels, "spatial_shape": [16] * spatial_dims}},
            "outputs": {"pred": {"num_channels": len(channel_def), "channel_def": channel_def}},
        },
    }
    if preprocessing is None:
        preprocessing = [
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS", "labels": None},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [0.5] * spatial_dims, "mode": "nearest"},
            {"_target_": "CropForegroundd", "keys": "image", "source_key": "image", "margin": 1},
            {"_target_": "DivisiblePadd", "keys": "image", "k": 8},
        ]
    infer = {
        "imports": ["$import monai_unetzoo"],
        "bundle_root": ".",
        "network_def": network or {"_target_": "unetzoo_fake_nets.OneHotOfInput", "num_classes": len(channel_def)},
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                *preprocessing,
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": roi_size or [24] * spatial_dims, "sw_batch_size": 2,
                    "overlap": 0.25},
    }
    infer.update(extra or {})
    (root / "metadata.json").write_text(json.dumps(meta, indent=1))
    (root / "inference.json").write_text(json.dumps(infer, indent=1))
    (root / "models").mkdir()
    torch.save(state_dict or {}, root / "models" / "model.pt")
    return root


def read_summary(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row["case"]: row for row in csv.DictReader(f)}


def save_nifti(path: Path, lab: np.ndarray, affine: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(lab.astype(np.int16), affine), path)


def oblique_affine(spacing=(1.0, 0.5, 2.5), origin=(12.5, -33.0, 7.25)) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = ROT @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


def tree_digest(folder: Path) -> dict[str, tuple[str, int, int]]:
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns, p.stat().st_mode)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def bundle3d(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("b") / "fake3d", name="fake3d")


def test_mixed_folder_good_cases_on_grid_bad_cases_reported(bundle3d, tmp_path):
    """The issue's folder: good NIfTI (RAS, and oblique LPS in a sub-folder), a DICOM series, a corrupt .nii.gz,
    an empty file, a text file; read-only inputs."""
    inp, out = tmp_path / "scans", tmp_path / "results"
    lab1, lab2, lab3 = label_map(seed=1), label_map(seed=2), label_map(seed=3)
    save_nifti(inp / "p01.nii.gz", lab1, np.diag([1.0, 1.5, 2.5, 1.0]))
    lps = oblique_affine()
    lps[:2] *= -1
    save_nifti(inp / "site_b" / "p02.nii", lab2, lps)
    series_affine = write_dicom_series(inp / "p03_mri", lab3, (10.0, -20.0, 30.0), (1.0, 0.5, 2.5), ROT)
    (inp / "corrupt.nii.gz").write_bytes((inp / "p01.nii.gz").read_bytes()[:250])
    (inp / "empty.nii.gz").write_bytes(b"")
    (inp / "notes.txt").write_text("patient list, not an image\n")
    (inp / "fake.nrrd").write_text("NRRD0004\nthis is text, not a volume\n")
    for p in inp.rglob("*"):
        os.chmod(p, 0o555 if p.is_dir() else 0o444)
    os.chmod(inp, 0o555)
    before = tree_digest(inp)
    try:
        rc = main(["predict", "--bundle", str(bundle3d), "--input", str(inp), "--output", str(out), "--quiet"])
    finally:
        for p in [inp, *inp.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
    assert rc == 1  # some case failed
    after = tree_digest(inp)
    assert {k: v[:2] for k, v in after.items()} == {k: v[:2] for k, v in before.items()}  # inputs untouched

    rows = read_summary(out / "summary.csv")
    assert set(rows) == {"p01.nii.gz", "site_b/p02.nii", "p03_mri/", "corrupt.nii.gz", "empty.nii.gz", "notes.txt",
                         "fake.nrrd"}
    status = {k: r["status"] for k, r in rows.items()}
    assert status == {"p01.nii.gz": "ok", "site_b/p02.nii": "ok", "p03_mri/": "ok", "corrupt.nii.gz": "failed",
                      "empty.nii.gz": "failed", "fake.nrrd": "failed", "notes.txt": "skipped"}
    assert "corrupt.nii.gz" in rows["corrupt.nii.gz"]["error"] and "cannot be read as NIfTI" in rows["corrupt.nii.gz"]["error"]
    assert "empty (0 bytes)" in rows["empty.nii.gz"]["error"]
    assert "not an image" in rows["notes.txt"]["error"]
    assert "fake.nrrd" in rows["fake.nrrd"]["error"]

    # good cases: labels voxel for voxel on the input grid, mirrored folders, format family kept
    o1, o2, o3 = out / "p01_seg.nii.gz", out / "site_b" / "p02_seg.nii", out / "p03_mri_seg.nii.gz"
    for o, lab, src in ((o1, lab1, inp / "p01.nii.gz"), (o2, lab2, inp / "site_b" / "p02.nii")):
        img, ref = nib.load(o), nib.load(src)
        np.testing.assert_array_equal(np.asarray(img.dataobj), lab)
        np.testing.assert_array_equal(img.affine, ref.affine)
        a, b = sitk.ReadImage(str(src)), sitk.ReadImage(str(o))
        assert (a.GetOrigin(), a.GetSpacing(), a.GetDirection()) == (b.GetOrigin(), b.GetSpacing(), b.GetDirection())
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(inp / "p03_mri")))
    ser, o3i = reader.Execute(), sitk.ReadImage(str(o3))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(o3i), lab3.transpose())
    np.testing.assert_allclose(o3i.GetOrigin(), ser.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(o3i.GetSpacing(), ser.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(o3i.GetDirection(), ser.GetDirection(), atol=1e-4)
    np.testing.assert_allclose(nib.load(o3).affine, series_affine, atol=1e-4)

    # the summary's volumes are a numpy count times the voxel volume (|det| of the affine, oblique-safe)
    for case, lab, aff in (("p01.nii.gz", lab1, np.diag([1.0, 1.5, 2.5, 1.0])), ("site_b/p02.nii", lab2, lps),
                           ("p03_mri/", lab3, series_affine)):
        voxel_mm3 = abs(np.linalg.det(aff[:3, :3]))
        for value, name in ((1, "anterior"), (2, "posterior")):
            n = int((lab == value).sum())
            assert int(rows[case][f"{name}_voxels"]) == n
            assert float(rows[case][f"{name}_mL"]) == pytest.approx(n * voxel_mm3 / 1000.0, rel=1e-5)
        assert rows[case]["shape"] == "20 x 24 x 16"
    assert rows["site_b/p02.nii"]["spacing"] == "1 x 0.5 x 2.5"

    prov = json.loads((out / "provenance.json").read_text())
    assert prov["checkpoint"]["sha256"] == hashlib.sha256((bundle3d / "models" / "model.pt").read_bytes()).hexdigest()
    assert prov["bundle"] == {"path": str(bundle3d), "name": "fake3d", "version": "0.0.1"}
    assert prov["status"] == "finished" and prov["exit_code"] == 1
    assert sorted(prov["cases_predicted"]) == ["p01.nii.gz", "p03_mri/", "site_b/p02.nii"]
    assert prov["settings"]["overlap"] == 0.25 and prov["settings"]["roi_size"] == [24, 24, 24]
    assert prov["start_time"] <= prov["end_time"]
    assert not list(out.rglob("*.tmp-*"))


def test_same_name_in_two_folders_and_rerun_skips(bundle3d, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    labs = {"a": label_map(seed=5), "b": label_map(seed=6)}
    for k, lab in labs.items():
        save_nifti(inp / k / "case.nii.gz", lab, np.diag([1.0, 1.0, 2.0, 1.0]))
    args = ["predict", "--bundle", str(bundle3d), "--input", str(inp), "--output", str(out), "--quiet"]
    assert main(args) == 0
    for k, lab in labs.items():  # never overwrite each other: the input folders are mirrored
        np.testing.assert_array_equal(np.asarray(nib.load(out / k / "case_seg.nii.gz").dataobj), lab)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*_seg.nii.gz")}
    time.sleep(0.02)

    assert main(args) == 0  # again: everything already done
    rows = read_summary(out / "summary.csv")
    assert {r["status"] for r in rows.values()} == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*_seg.nii.gz")} == stamps
    assert int(rows["a/case.nii.gz"]["anterior_voxels"]) == int((labs["a"] == 1).sum())  # measured from the output
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["cases_predicted"] == [] and len(prov["previous_runs"]) == 1

    assert main(args + ["--overwrite"]) == 0
    assert {r["status"] for r in read_summary(out / "summary.csv").values()} == {"ok"}
    assert all(p.stat().st_mtime_ns > stamps[p] for p in stamps)


def test_folder_of_symlinks_mirrors_its_own_layout(bundle3d, tmp_path):
    store, links, out = tmp_path / "store" / "deep", tmp_path / "links", tmp_path / "out"
    lab = label_map(seed=9)
    save_nifti(store / "x.nii.gz", lab, np.eye(4))
    links.mkdir()
    (links / "patient7.nii.gz").symlink_to(store / "x.nii.gz")
    assert main(["predict", "--bundle", str(bundle3d), "--input", str(links), "--output", str(out), "--quiet"]) == 0
    np.testing.assert_array_equal(np.asarray(nib.load(out / "patient7_seg.nii.gz").dataobj), lab)
    assert (links / "patient7.nii.gz").is_symlink()


def test_wrong_channels_dims_and_nan_are_reported(bundle3d, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    save_nifti(inp / "ok.nii.gz", label_map(), np.eye(4))
    nib.save(nib.Nifti1Image(np.zeros((20, 24, 16, 2), np.float32), np.eye(4)), inp / "two_channels.nii.gz")
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(inp / "photo.png")
    bad = label_map().astype(np.float32)
    bad[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(bad, np.eye(4)), inp / "nan.nii.gz")
    rc = main(["predict", "--bundle", str(bundle3d), "--input", str(inp), "--output", str(out), "--quiet"])
    assert rc == 1
    rows = read_summary(out / "summary.csv")
    assert rows["ok.nii.gz"]["status"] == "ok"
    assert "has 2 channel(s), but the bundle 'fake3d' expects 1" in rows["two_channels.nii.gz"]["error"]
    assert "a 2D image of shape (10, 12), but the bundle 'fake3d' segments 3D images" in rows["photo.png"]["error"]
    assert "1 of 7680 values are NaN or infinite" in rows["nan.nii.gz"]["error"]
    assert sorted(p.name for p in out.iterdir()) == [".unetzoo", "ok_preview.png", "ok_seg.nii.gz", "provenance.json",
                                                     "report.html", "summary.csv"]


def test_usage_errors_exit_2_before_any_work(bundle3d, tmp_path, capsys):
    inp = tmp_path / "in"
    save_nifti(inp / "x.nii.gz", label_map(), np.eye(4))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    # output "folder" below a regular file: cannot be created
    assert main(["predict", "--bundle", str(bundle3d), "--input", str(inp), "--output", str(blocker / "out")]) == 2
    assert "cannot create the output folder" in capsys.readouterr().err
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "readonly"
        ro.mkdir()
        os.chmod(ro, 0o555)
        try:
            assert main(["predict", "--bundle", str(bundle3d), "--input", str(inp), "--output", str(ro)]) == 2
            assert "not writable" in capsys.readouterr().err
        finally:
            os.chmod(ro, 0o755)
    out = tmp_path / "out"
    assert main(["predict", "--bundle", str(tmp_path / "nope"), "--input", str(inp), "--output", str(out)]) == 2
    assert "bundle folder not found" in capsys.readouterr().err
    assert main(["predict", "--bundle", str(bundle3d), "--input", str(tmp_path / "missing"), "--output", str(out)]) == 2
    assert "input not found" in capsys.readouterr().err
    wrong = make_bundle(tmp_path / "wrong", state_dict={"unexpected.weight": torch.zeros(1)})
    assert main(["predict", "--bundle", str(wrong), "--input", str(inp), "--output", str(out)]) == 2
    assert "does not fit the bundle's network_def" in capsys.readouterr().err
    assert main(["predict", "--bundle", str(bundle3d), "--input", str(inp), "--output", str(out),
                 "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert not list(out.glob("*_seg*"))  # nothing was predicted
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--bundle", str(bundle3d), "--input", str(inp), "--output", str(out), "--shard", "3/2"])
    assert exc.value.code == 2


def test_shards_split_the_work_without_overlap(bundle3d, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    for i in range(5):
        save_nifti(inp / f"c{i}.nii.gz", label_map(seed=i), np.eye(4))
    base = ["predict", "--bundle", str(bundle3d), "--input", str(inp), "--output", str(out), "--quiet"]
    assert main(base + ["--shard", "1/2"]) == 0
    assert main(base + ["--shard", "2/2"]) == 0
    s1 = read_summary(out / "summary.shard-1-of-2.csv")
    s2 = read_summary(out / "summary.shard-2-of-2.csv")
    assert set(s1).isdisjoint(s2) and set(s1) | set(s2) == {f"c{i}.nii.gz" for i in range(5)}
    assert all(r["status"] == "ok" for r in [*s1.values(), *s2.values()])
    for i in range(5):
        np.testing.assert_array_equal(np.asarray(nib.load(out / f"c{i}_seg.nii.gz").dataobj), label_map(seed=i))


def test_glob_input_probabilities_and_2d_bundle_on_xy1_nifti(tmp_path):
    """A 2D bundle on PNG and on (X, Y, 1) NIfTI given by a glob; probability maps sum to one and their argmax is
    the label map."""
    bundle = make_bundle(tmp_path / "b2d", spatial_dims=2, channel_def={"0": "background", "1": "vessel"},
                         preprocessing=[{"_target_": "DivisiblePadd", "keys": "image", "k": 16}], roi_size=[16, 16],
                         extra={"mirror_axes": [0, 1]})
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    lab_hw = (label_map((13, 22), seed=4).T > 0).astype(np.uint8)  # (H=22, W=13)
    Image.fromarray(lab_hw).save(inp / "fundus.png")
    lab_xy1 = (label_map((15, 11), seed=7) > 0).astype(np.uint8)[..., None]
    nib.save(nib.Nifti1Image(lab_xy1, np.diag([0.3, 0.4, 5.0, 1.0])), inp / "slice.nii.gz")
    rc = main(["predict", "--bundle", str(bundle), "--input", str(inp / "*"), "--output", str(out), "--quiet",
               "--save-probabilities", "--tta"])  # mirroring TTA: the identity is flip-equivariant
    assert rc == 0
    assert json.loads((out / "provenance.json").read_text())["settings"]["tta_axes"] == [0, 1]
    # a one-class 2D bundle writes PNG/TIFF masks as 0/255 (visible in any viewer); NIfTI keeps the label values
    np.testing.assert_array_equal(np.asarray(Image.open(out / "fundus_seg.png")), lab_hw * 255)
    seg = nib.load(out / "slice_seg.nii.gz")
    assert seg.shape == (15, 11, 1)
    np.testing.assert_array_equal(np.asarray(seg.dataobj), lab_xy1)
    prob = np.asarray(nib.load(out / "slice_prob.nii.gz").dataobj)
    assert prob.shape == (15, 11, 1, 2)
    np.testing.assert_allclose(prob.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(prob.argmax(-1), lab_xy1)
    import tifffile

    png_prob = tifffile.imread(out / "fundus_prob.tif")  # float probabilities of a PNG input: TIFF, (C, H, W)
    assert png_prob.shape == (2, 22, 13)
    np.testing.assert_array_equal(png_prob.argmax(0), lab_hw)
    rows = read_summary(out / "summary.csv")
    assert int(rows["slice.nii.gz"]["vessel_pixels"]) == int(lab_xy1.sum())
    assert float(rows["slice.nii.gz"]["vessel_mm2"]) == pytest.approx(lab_xy1.sum() * 0.3 * 0.4, rel=1e-5)
    assert rows["fundus.png"]["vessel_mm2"] == ""  # a PNG has no physical pixel size


def _tiny_unet_bundle(root: Path, spatial_dims: int, in_channels: int) -> tuple[Path, torch.nn.Module]:
    from monai_unetzoo.networks import get_network

    torch.manual_seed(0)
    # instance norm: an untrained network whose output still varies over the image (batch norm's initial running
    # statistics make it nearly constant), so that a wrongly loaded checkpoint shows
    kwargs = dict(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=2, features=(4, 8), norm="instance")
    net = get_network("unet", **kwargs).eval()
    bundle = make_bundle(
        root, spatial_dims=spatial_dims, in_channels=in_channels, channel_def={"0": "background", "1": "vessel"},
        network={"_target_": "monai_unetzoo.networks.ClassicUNet", **kwargs},
        preprocessing=[{"_target_": "ScaleIntensityd", "keys": "image"}], roi_size=[-1] * spatial_dims,
        state_dict=net.state_dict(),
    )
    return bundle, net


def _reference_2d(net: torch.nn.Module, rgb_hw3: np.ndarray) -> np.ndarray:
    """Independent reference: PIL's (H, W, 3) -> (1, 3, W, H) like MONAI, min-max scaled, whole-image forward,
    argmax, back to (H, W). Weights and input in channels-last as the CLI runs them (``channels_last_network``):
    another memory format sums in another order, which flips a few near-tied pixels of this random network."""
    x = torch.as_tensor(rgb_hw3.astype(np.float32)).permute(2, 1, 0)[None]
    x = ((x - x.min()) / (x.max() - x.min())).contiguous(memory_format=torch.channels_last)
    net = channels_last_network(copy.deepcopy(net))
    with torch.no_grad():
        return net(x)[0].argmax(0).numpy().T


def test_checkpoint_is_used_on_rgb_tif_and_png(tmp_path):
    bundle, net = _tiny_unet_bundle(tmp_path / "unet2d", spatial_dims=2, in_channels=3)
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    rng = np.random.default_rng(0)
    rgb = (rng.random((30, 21, 3)) * 255).astype(np.uint8)
    rgb[5:20, 3:9] = 250
    Image.fromarray(rgb).save(inp / "photo.png")
    import tifffile

    tifffile.imwrite(inp / "photo_b.tif", rgb, photometric="rgb")
    assert main(["predict", "--bundle", str(bundle), "--input", str(inp), "--output", str(out), "--quiet"]) == 0
    ref = _reference_2d(net, rgb)
    assert 0 < ref.sum() < ref.size  # the check below can tell a loaded checkpoint from a random one
    # one foreground class in 2D: PNG/TIFF masks are 0/255
    np.testing.assert_array_equal(np.asarray(Image.open(out / "photo_seg.png")), ref * 255)
    np.testing.assert_array_equal(tifffile.imread(out / "photo_b_seg.tif"), ref * 255)


def test_layered_drive_style_bundle_reader_options_and_field_of_view(tmp_path):
    """A bundle laid out like bundles/drive: inference.json layered over train.json ("+imports"), its pipeline
    under infer#preprocessing / infer#inferer, images loaded by PILReader(reverse_indexing=False) as (C, H, W), one
    sigmoid channel, and a field-of-view "roi" made by the preprocessing. The CLI must load photographs the way
    the bundle does (a transposed image gives a different UNet output) and keep everything outside the FOV
    background."""
    from monai_unetzoo.networks import get_network

    root = tmp_path / "drive_like"
    root.mkdir()
    (root / "unetzoo_fake_nets.py").write_text(FAKE_NETS)
    kwargs = dict(spatial_dims=2, in_channels=3, out_channels=1, features=(4, 8), norm="instance")
    torch.manual_seed(3)
    net = get_network("unet", **kwargs).eval()
    (root / "models").mkdir()
    torch.save(net.state_dict(), root / "models" / "model.pt")
    (root / "metadata.json").write_text(json.dumps({"name": "drive_like", "version": "0.2.0", "network_data_format": {
        "inputs": {"image": {"num_channels": 3, "spatial_shape": ["16*n", "16*n"]}},
        "outputs": {"pred": {"num_channels": 1, "channel_def": {"0": "vessel"}}}}}))
    (root / "train.json").write_text(json.dumps({
        "imports": ["$import torch"], "bundle_root": "$'/nonexistent'", "patch_size": [-1, -1],
        "data_root": "$1 / 0",  # never needed for prediction: lazy resolution must not touch it
        "network_def": {"_target_": "monai_unetzoo.networks.ClassicUNet", **kwargs}}))
    (root / "inference.json").write_text(json.dumps({
        "+imports": ["$import unetzoo_fake_nets"],
        "infer": {
            "preprocessing": {"_target_": "Compose", "transforms": [
                {"_target_": "LoadImaged", "keys": ["image", "roi"], "reader": "PILReader", "reverse_indexing": False,
                 "ensure_channel_first": True, "image_only": True, "allow_missing_keys": True},
                {"_target_": "unetzoo_fake_nets.BrightRoid", "threshold": 20.0},
                {"_target_": "ScaleIntensityd", "keys": "image"}]},
            "inferer": {"_target_": "monai_unetzoo.inference.SlidingWindowPredictor", "roi_size": "@patch_size",
                        "sw_batch_size": 4, "overlap": 0.5, "activation": "sigmoid"},
            "evaluator": "$1 / 0"}}))
    rng = np.random.default_rng(1)
    rgb = (rng.random((27, 19, 3)) * 200 + 30).astype(np.uint8)
    rgb[:4] = 0  # a black band outside the field of view
    rgb[-3:, :5] = 0
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    Image.fromarray(rgb).save(inp / "eye.png")
    import tifffile

    tifffile.imwrite(inp / "eye2.tif", rgb, photometric="rgb")
    assert main(["predict", "--bundle", str(root), "--input", str(inp), "--output", str(out), "--quiet"]) == 0
    x = torch.as_tensor(rgb.astype(np.float32)).permute(2, 0, 1)[None]  # (1, 3, H, W), as the bundle loads it
    x = (x - x.min()) / (x.max() - x.min())
    with torch.no_grad():
        ref = (torch.sigmoid(net(x))[0, 0] > 0.5).numpy().astype(np.uint8)
    fov = rgb.max(-1) > 20
    ref[~fov] = 0
    with torch.no_grad():  # the transposed image would give another answer: the reader options matter
        other = (torch.sigmoid(net(x.transpose(2, 3)))[0, 0] > 0.5).numpy().T.astype(np.uint8)
    assert (other[fov] != ref[fov]).any() and ref[fov].any() and not ref[fov].all()
    np.testing.assert_array_equal(np.asarray(Image.open(out / "eye_seg.png")), ref * 255)
    np.testing.assert_array_equal(tifffile.imread(out / "eye2_seg.tif"), ref * 255)
    rows = read_summary(out / "summary.csv")
    assert int(rows["eye.png"]["vessel_pixels"]) == int(ref.sum())
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["bundle"]["version"] == "0.2.0" and prov["settings"]["activation"] == "sigmoid"


@pytest.mark.parametrize("name", ["drive", "hippocampus"])
def test_repository_bundles_satisfy_the_cli_contract(name, tmp_path):
    """The real bundles of this repository, with a checkpoint of their own (untrained) network_def: the CLI parses
    them, predicts a small synthetic input on its grid, and reports it ok."""
    from monai.bundle import ConfigParser

    bundle = REPO / "bundles" / name
    if not (bundle / "inference.json").is_file():
        pytest.skip(f"{bundle} not present yet")
    parser = ConfigParser()
    parser.read_config(str(bundle / "train.json"))
    parser["bundle_root"] = str(bundle)
    parser.get_parsed_content("imports")
    ckpt = tmp_path / "model.pt"
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), ckpt)
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    if name == "drive":
        yy, xx = np.mgrid[:40, :36]
        rgb = np.zeros((40, 36, 3), np.uint8)
        rgb[(yy - 20) ** 2 + (xx - 18) ** 2 < 15**2] = (150, 80, 40)  # a bright disk: the field of view
        src = inp / "01_test.tif"
        Image.fromarray(rgb).save(src)
    else:
        src = inp / "hippo.nii.gz"
        img = np.random.default_rng(0).normal(100, 20, (20, 24, 16)).astype(np.float32)
        nib.save(nib.Nifti1Image(img, oblique_affine()), src)
    rc = main(["predict", "--bundle", str(bundle), "--checkpoint", str(ckpt), "--input", str(inp), "--output",
               str(out), "--quiet"])
    rows = read_summary(out / "summary.csv")
    assert rc == 0, rows
    assert [r["status"] for r in rows.values()] == ["ok"]
    seg_path = Path(next(iter(rows.values()))["output"])
    if name == "drive":
        import tifffile

        seg = tifffile.imread(seg_path)
        assert seg.shape == (40, 36) and set(np.unique(seg)) <= {0, 255}
        assert not seg[0].any()  # outside the field of view
    else:
        seg = nib.load(seg_path)
        assert seg.shape == (20, 24, 16) and set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}
        np.testing.assert_array_equal(seg.affine, nib.load(src).affine)


@pytest.mark.real_data
def test_drive_fundus_photograph(drive_dir, tmp_path):
    """A real DRIVE test image (RGB TIFF, 565x584) through a tiny 2D UNet bundle: TIFF out with the photograph's
    (H, W) layout, equal to an independent PIL + torch computation."""
    bundle, net = _tiny_unet_bundle(tmp_path / "unet2d", spatial_dims=2, in_channels=3)
    src = drive_dir / "test" / "images" / "01_test.tif"
    out = tmp_path / "out"
    assert main(["predict", "--bundle", str(bundle), "--input", str(src), "--output", str(out), "--quiet"]) == 0
    import tifffile

    seg = tifffile.imread(out / "01_test_seg.tif")
    rgb = np.asarray(Image.open(src).convert("RGB"))
    assert seg.shape == rgb.shape[:2] == (584, 565)
    np.testing.assert_array_equal(seg, _reference_2d(net, rgb) * 255)


@pytest.mark.real_data
def test_hippocampus_cases_identity_end_to_end(hippocampus_dir, bundle3d, tmp_path):
    """Real MSD label volumes given as a glob: each predicted label map equals its input voxel for voxel, the
    header is the input's and the summary's mL equal numpy counts times the voxel volume."""
    files = sorted((hippocampus_dir / "labelsTr").glob("hippocampus_*.nii.gz"))[:2]
    out = tmp_path / "out"
    pattern = str(hippocampus_dir / "labelsTr" / "hippocampus_00[0-9].nii.gz")
    rc = main(["predict", "--bundle", str(bundle3d), "--input", pattern, "--output", str(out), "--quiet"])
    assert rc == 0
    rows = read_summary(out / "summary.csv")
    for f in files:
        ref = nib.load(f)
        lab = np.asarray(ref.dataobj)
        seg = nib.load(out / f.name.replace(".nii.gz", "_seg.nii.gz"))
        np.testing.assert_array_equal(np.asarray(seg.dataobj), lab)
        np.testing.assert_array_equal(seg.affine, ref.affine)
        voxel = abs(np.linalg.det(ref.affine[:3, :3]))
        assert float(rows[f.name]["posterior_mL"]) == pytest.approx((lab == 2).sum() * voxel / 1000, rel=1e-5)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_mid_batch_then_rerun_finishes_each_case_once(tmp_path):
    """A slow network; SIGTERM after the first outputs appear; then the same command again."""
    bundle = make_bundle(tmp_path / "slow", name="slow",
                         network={"_target_": "unetzoo_fake_nets.OneHotOfInput", "num_classes": 3, "delay": 0.5},
                         preprocessing=[], roi_size=[-1, -1, -1])
    inp, out = tmp_path / "in", tmp_path / "out"
    labs = {f"case{i}": label_map((12, 10, 8), seed=10 + i) for i in range(6)}
    for name, lab in labs.items():
        save_nifti(inp / f"{name}.nii.gz", lab, np.diag([1.0, 1.0, 3.0, 1.0]))
    cmd = [sys.executable, "-m", "monai_unetzoo", "predict", "--bundle", str(bundle), "--input", str(inp),
           "--output", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            encoding="utf-8", errors="replace")
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and len(list(out.glob("*_seg.nii.gz"))) < 2:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert "interrupted" in stdout
    first = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*_seg.nii.gz")}
    assert 2 <= len(first) < 6
    assert not list(out.rglob("*.tmp-*"))  # no partial file
    rows = read_summary(out / "summary.csv")
    assert {r["status"] for r in rows.values()} <= {"ok", "interrupted"}
    assert sum(r["status"] == "ok" for r in rows.values()) == len(first)  # the summary matches what is on disk
    prov1 = json.loads((out / "provenance.json").read_text())
    assert prov1["status"] == "interrupted by SIGTERM" and prov1["exit_code"] == 143

    done = subprocess.run(cmd + ["--quiet"], cwd=REPO, env=env, capture_output=True, encoding="utf-8", errors="replace",
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert not list(out.rglob("*.tmp-*"))
    for name, lab in labs.items():
        np.testing.assert_array_equal(np.asarray(nib.load(out / f"{name}_seg.nii.gz").dataobj), lab)
    # outputs of the first run were not rewritten; every case was predicted exactly once over the two runs
    assert {n: (p.stat().st_ino, p.stat().st_mtime_ns) for n, p in ((n, out / n) for n in first)} == first
    prov2 = json.loads((out / "provenance.json").read_text())
    predicted = prov2["previous_runs"][-1]["cases_predicted"] + prov2["cases_predicted"]
    assert sorted(predicted) == sorted(f"{n}.nii.gz" for n in labs)
    rows = read_summary(out / "summary.csv")
    assert sorted(r["status"] for r in rows.values()) == ["ok"] * (6 - len(first)) + ["skipped"] * len(first)


def test_help_and_dry_run(bundle3d, tmp_path, capsys):
    inp = tmp_path / "in"
    save_nifti(inp / "x.nii.gz", label_map(), np.eye(4))
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--bundle" in text and "summary.csv" in text and "DICOM series" in text
    out = tmp_path / "out"
    assert main(["predict", "--bundle", str(bundle3d), "--input", str(inp), "--output", str(out), "--dry-run"]) == 0
    assert str(out / "x_seg.nii.gz") in capsys.readouterr().out
    assert not list(out.glob("*_seg*")) and not (out / "summary.csv").exists()


def test_postprocess_keeps_largest_component_and_removes_small_ones():
    """Hand-built label map: label 1 in a 27-voxel cube, an 8-voxel cube and a single voxel; label 2 in a 1x1x2 bar
    touching nothing. Expected results written out by hand (full connectivity: the diagonal voxel joins)."""
    from monai_unetzoo.predict import parse_postprocess

    lab = np.zeros((12, 12, 12), np.uint8)
    lab[0:3, 0:3, 0:3] = 1  # 27 voxels
    lab[6:8, 6:8, 6:8] = 1  # 8 voxels
    lab[3, 3, 3] = 1  # touches the 27-cube at a corner: one component under 26-connectivity (28 voxels)
    lab[10, 10, 10:12] = 2  # 2 voxels
    largest = parse_postprocess("largest")(lab)
    expect = lab.copy()
    expect[6:8, 6:8, 6:8] = 0
    np.testing.assert_array_equal(largest, expect)
    # voxels of 0.5 x 0.5 x 0.5 mm = 0.125 mm^3: min-size 1.5 mm^3 = 12 voxels removes the 8-cube and the bar
    small = parse_postprocess({"min_size": 1.5})(lab, voxel_size=0.125)
    expect = lab.copy()
    expect[6:8, 6:8, 6:8] = 0
    expect[10, 10, 10:12] = 0
    np.testing.assert_array_equal(small, expect)
    assert parse_postprocess("largest,min-size=50").describe() == "largest,min-size=50"
    assert parse_postprocess(None).describe() == "none"
    with pytest.raises(ValueError, match="min-size"):
        parse_postprocess("min-size=abc")


def test_cli_postprocess_option_and_summary(bundle3d, tmp_path):
    """--postprocess largest through the CLI: the written map equals the hand-made expectation; the summary says
    what ran; a bad spec is a usage error (exit 2) before any work."""
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[2:8, 2:8, 2:8] = 1
    lab[14:16, 14:16, 14:16] = 1
    lab[10:13, 2:5, 2:5] = 2
    save_nifti(inp / "case.nii.gz", lab, np.diag([0.5, 0.5, 0.5, 1.0]))
    assert main(["predict", "--bundle", str(bundle3d), "--input", str(inp), "--output", str(out), "--quiet",
                 "--postprocess", "largest"]) == 0
    expect = lab.copy()
    expect[14:16, 14:16, 14:16] = 0
    np.testing.assert_array_equal(np.asarray(nib.load(out / "case_seg.nii.gz").dataobj), expect)
    row = read_summary(out / "summary.csv")["case.nii.gz"]
    assert row["postprocess"] == "largest" and int(row["anterior_voxels"]) == 216
    assert main(["predict", "--bundle", str(bundle3d), "--input", str(inp), "--output", str(tmp_path / "o2"),
                 "--postprocess", "biggest"]) == 2
