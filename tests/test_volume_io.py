"""Scans on their exact grid: reading through MONAI, writing back with the input's own geometry (issue 5).

Every format is written here by an independent library (nibabel, SimpleITK, tifffile, PIL) from a known label map,
read with ``load_scan``, pushed through orientation + resampling + cropping + padding, through an identity "network"
(one-hot of the input label) and MONAI's ``Invertd``, written with ``write_scan_like`` and read back with nibabel
and SimpleITK: the geometry must equal the input's and every voxel must carry its original label.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from monai_unetzoo.volume_io import (
    ScanReadError,
    atomic_output_path,
    load_scan,
    remove_stale_temporaries,
    scan_output_suffix,
    write_scan_like,
)

SHAPE = (20, 24, 16)  # file index order (i, j, k) = ITK (x, y, z)
ROT = Rotation.from_euler("xyz", [14.0, -21.0, 8.0], degrees=True).as_matrix()


def label_map(shape=SHAPE, seed=0) -> np.ndarray:
    """Labels 0/1/2 with blocks and holes, asymmetric along every axis (a flip would show)."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint8)
    sl1 = tuple(slice(max(1, s // 6), s // 2 + 1) for s in shape)
    sl2 = tuple(slice(s // 2 + 1, s - 2) for s in shape)
    lab[sl1] = 1
    lab[sl2] = 2
    lab[(rng.random(shape) < 0.08)] = 0
    lab[(0,) * len(shape)] = 2  # a corner voxel: catches off-by-one in flips/crops
    return lab


def ras_from_lps(origin, spacing, direction) -> np.ndarray:
    d = len(origin)
    a = np.eye(d + 1)
    a[:d, :d] = np.asarray(direction, float).reshape(d, d) @ np.diag(spacing)
    a[:d, d] = origin
    return np.diag([-1.0, -1.0] + [1.0] * (d - 2) + [1.0]) @ a


def write_itk(path: Path, lab: np.ndarray, origin, spacing, direction) -> np.ndarray:
    img = sitk.GetImageFromArray(lab.transpose().astype(np.int16))
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(np.asarray(direction, float).flatten().tolist())
    sitk.WriteImage(img, str(path))
    return ras_from_lps(origin, spacing, direction)


def write_dicom_series(folder: Path, lab: np.ndarray, origin, spacing, direction) -> np.ndarray:
    """One file per k-slice, with the position/orientation tags GDCM sorts by; returns the RAS affine.

    SimpleITK's GDCM writer switches the process to the C locale (ASCII); the caller's locale is restored, or
    later code in the same test process (torch.compile's caches, ``subprocess`` text decoding) reads UTF-8 as ASCII.
    """
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    try:
        return _write_dicom_series(folder, lab, origin, spacing, direction)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_dicom_series(folder: Path, lab: np.ndarray, origin, spacing, direction) -> np.ndarray:
    folder.mkdir(parents=True)
    vol = sitk.GetImageFromArray(lab.transpose().astype(np.int16))
    vol.SetOrigin(origin)
    vol.SetSpacing(spacing)
    vol.SetDirection(np.asarray(direction, float).flatten().tolist())
    d = np.asarray(direction, float).reshape(3, 3)
    uid = "1.2.826.0.1.3680043.2.1125.77.1"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(lab.shape[2]):
        sl = vol[:, :, k]
        for tag, value in [
            ("0008|0060", "MR"),
            ("0020|000d", uid + ".0"),
            ("0020|000e", uid),
            ("0020|0013", str(k + 1)),
            ("0020|0032", "\\".join(f"{v:.10f}" for v in vol.TransformIndexToPhysicalPoint((0, 0, k)))),
            ("0020|0037", "\\".join(f"{v:.10f}" for v in (*d[:, 0], *d[:, 1]))),
            ("0018|0050", str(spacing[2])),
            ("0028|0030", f"{spacing[1]}\\{spacing[0]}"),
        ]:
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{k:04d}.dcm"))
        writer.Execute(sl)
    return ras_from_lps(origin, spacing, direction)


def make_scan(kind: str, tmp: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """Write the label map as a scan of ``kind``; return (path, label map in file index order, RAS affine)."""
    lab = label_map()
    if kind == "nifti_ras":
        aff = np.diag([1.0, 1.5, 2.5, 1.0])
        aff[:3, 3] = [-10, 20, 5]
        path = tmp / "ras.nii.gz"
        nib.save(nib.Nifti1Image(lab.astype(np.int16), aff), path)
        return path, lab, aff
    if kind == "nifti_lps":  # voxel axes pointing left, posterior, superior
        aff = np.diag([-1.0, -1.0, 2.0, 1.0])
        aff[:3, 3] = [30, 40, -20]
        path = tmp / "lps.nii"
        nib.save(nib.Nifti1Image(lab.astype(np.int16), aff), path)
        return path, lab, aff
    if kind == "nifti_oblique":  # oblique + anisotropic; sform (code 2) and a different qform (code 1)
        aff = np.eye(4)
        aff[:3, :3] = ROT @ np.diag([1.0, 0.5, 2.5])
        aff[:3, 3] = [12.5, -33.0, 7.25]
        img = nib.Nifti1Image(lab.astype(np.int16), None)
        img.set_sform(aff, code=2)
        img.set_qform(np.diag([1.0, 0.5, 2.5, 1.0]), code=1)
        path = tmp / "oblique.nii.gz"
        nib.save(img, path)
        return path, lab, aff
    if kind == "nrrd_oblique":
        path = tmp / "oblique.nrrd"
        return path, lab, write_itk(path, lab, (3.0, -4.0, 5.5), (1.0, 1.5, 2.0), ROT)
    if kind == "mha_lps":
        path = tmp / "lps.mha"
        return path, lab, write_itk(path, lab, (-7.0, 8.0, 9.0), (0.5, 1.0, 2.5), np.eye(3))
    if kind == "mhd_flipped":  # MetaImage with detached data: output becomes one .mha
        path = tmp / "flipped.mhd"
        return path, lab, write_itk(path, lab, (1.0, 2.0, 3.0), (1.0, 1.0, 1.5), np.diag([-1.0, 1.0, -1.0]))
    if kind == "dicom_oblique":
        path = tmp / "series"
        return path, lab, write_dicom_series(path, lab, (10.0, -20.0, 30.0), (1.0, 0.5, 2.5), ROT)
    if kind == "tiff_stack":
        path = tmp / "stack.tif"
        tifffile.imwrite(path, lab.transpose())  # pages = k, rows = j, columns = i
        return path, lab, np.diag([-1.0, -1.0, 1.0, 1.0])
    raise ValueError(kind)


def preprocessing_3d():
    from monai.transforms import Compose, CropForegroundd, DivisiblePadd, Orientationd, Spacingd

    return Compose(
        [
            Orientationd("image", axcodes="RAS", labels=None),
            Spacingd("image", pixdim=(0.5, 0.5, 0.5), mode="nearest"),  # every test spacing is a multiple of 0.5
            CropForegroundd("image", source_key="image", margin=1),
            DivisiblePadd("image", k=8),
        ]
    )


def identity_through(image, preprocessing, num_classes=3) -> np.ndarray:
    """Preprocess, one-hot the (label-valued) input as a network would, invert the preprocessing, argmax."""
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    data = preprocessing({"image": image})
    x = data["image"]
    assert tuple(x.shape[1:]) != tuple(image.shape[1:])  # the grid really changed in between
    onehot = torch.nn.functional.one_hot(x[0].as_tensor().round().long(), num_classes).movedim(-1, 0).float()
    data["pred"] = MetaTensor(onehot)
    probs = Invertd("pred", transform=preprocessing, orig_keys="image", nearest_interp=False)(data)["pred"]
    return probs.argmax(0).numpy()


SITK_KINDS = ["nifti_ras", "nifti_lps", "nifti_oblique", "nrrd_oblique", "mha_lps", "mhd_flipped", "dicom_oblique"]


@pytest.mark.parametrize("kind", SITK_KINDS + ["tiff_stack"])
def test_identity_prediction_lands_on_the_input_grid(kind, tmp_path):
    path, lab, affine = make_scan(kind, tmp_path)
    image, grid = load_scan(path)
    # MONAI's loaded array is the file's index order and its affine the (RAS) affine the file was written with
    assert image.shape == (1, *SHAPE)
    np.testing.assert_array_equal(image[0].numpy(), lab)
    np.testing.assert_allclose(grid.affine, affine, atol=1e-5)
    np.testing.assert_allclose(grid.voxel_volume, abs(np.linalg.det(affine[:3, :3])), rtol=1e-6)

    labels = identity_through(image, preprocessing_3d())
    np.testing.assert_array_equal(labels, lab)  # voxel for voxel, whatever ran in between

    out = tmp_path / "out" / f"pred_seg{scan_output_suffix(grid)}"
    write_scan_like(labels, grid, out)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary left behind

    if kind == "tiff_stack":
        back = tifffile.imread(out)
        assert back.shape == lab.transpose().shape
        np.testing.assert_array_equal(back, lab.transpose())
        ref, got = sitk.ReadImage(str(path)), sitk.ReadImage(str(out))
        assert got.GetSize() == ref.GetSize() and got.GetSpacing() == ref.GetSpacing()
        return

    # SimpleITK readback: same size/origin/spacing/direction as the input read by SimpleITK, labels in place
    if kind == "dicom_oblique":
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path)))
        ref = reader.Execute()
        assert out.name.endswith(".nii.gz")  # DICOM series in, NIfTI out
        tol = 1e-4  # NIfTI stores the geometry in float32
    else:
        ref = sitk.ReadImage(str(path))
        tol = 1e-9
    got = sitk.ReadImage(str(out))
    assert got.GetSize() == ref.GetSize()
    np.testing.assert_allclose(got.GetOrigin(), ref.GetOrigin(), atol=tol)
    np.testing.assert_allclose(got.GetSpacing(), ref.GetSpacing(), atol=tol)
    np.testing.assert_allclose(got.GetDirection(), ref.GetDirection(), atol=tol)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(got), lab.transpose())
    if kind == "mhd_flipped":
        assert out.suffix == ".mha"

    # nibabel readback for NIfTI outputs: the very same header geometry (affine, qform/sform and their codes)
    if out.name.endswith((".nii", ".nii.gz")):
        o = nib.load(out)
        np.testing.assert_array_equal(np.asarray(o.dataobj), lab)
        assert o.get_data_dtype() == np.uint8
        if kind.startswith("nifti"):
            i = nib.load(path)
            np.testing.assert_array_equal(o.affine, i.affine)
            for getter in ("get_sform", "get_qform"):
                a_in, code_in = getattr(i.header, getter)(coded=True)
                a_out, code_out = getattr(o.header, getter)(coded=True)
                assert code_out == code_in
                if a_in is not None:
                    np.testing.assert_array_equal(a_out, a_in)
            np.testing.assert_array_equal(o.header.get_zooms(), i.header.get_zooms())
        else:
            np.testing.assert_allclose(o.affine, affine, atol=1e-4)


def test_lps_and_ras_inputs_of_one_physical_object_give_the_same_physical_labels(tmp_path):
    """The same anatomy stored RAS-first and LPS-first: after prediction each output, resampled to world space
    (nibabel affine), puts every label at the same physical point."""
    lab = label_map()
    ras_aff = np.diag([1.0, 1.0, 2.0, 1.0])
    lps_aff = ras_aff.copy()
    lps_aff[:2, :2] = -np.eye(2)
    lps_aff[0, 3], lps_aff[1, 3] = SHAPE[0] - 1, SHAPE[1] - 1  # flipping i and j keeps the same world positions
    nib.save(nib.Nifti1Image(lab.astype(np.int16), ras_aff), tmp_path / "r.nii.gz")
    nib.save(nib.Nifti1Image(lab[::-1, ::-1].astype(np.int16), lps_aff), tmp_path / "l.nii.gz")
    outs = {}
    for name in ("r", "l"):
        image, grid = load_scan(tmp_path / f"{name}.nii.gz")
        write_scan_like(identity_through(image, preprocessing_3d()), grid, tmp_path / f"{name}_seg.nii.gz")
        outs[name] = nib.load(tmp_path / f"{name}_seg.nii.gz")
    r, l_ = (np.asarray(outs[k].dataobj) for k in ("r", "l"))
    idx = np.argwhere(np.ones(SHAPE, bool))
    world = nib.affines.apply_affine(outs["r"].affine, idx)
    l_idx = np.rint(nib.affines.apply_affine(np.linalg.inv(outs["l"].affine), world)).astype(int)
    np.testing.assert_array_equal(r[tuple(idx.T)], l_[tuple(l_idx.T)])


@pytest.mark.parametrize("suffix", [".png", ".gif", ".tif"])
def test_2d_images_keep_their_pixel_grid(suffix, tmp_path):
    """PIL/ITK give (W, H): a result written back must have the input's (H, W) pixel layout."""
    from monai.transforms import Compose, DivisiblePadd, Spacingd

    lab_hw = label_map((13, 22)).T.copy()  # H=22 rows, W=13 columns
    path = tmp_path / f"img{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, lab_hw)
    else:
        Image.fromarray(lab_hw).save(path)
    image, grid = load_scan(path)
    assert grid.spatial_shape == (13, 22)  # MONAI's (W, H)
    np.testing.assert_array_equal(image[0].numpy(), lab_hw.T)
    pre = Compose([Spacingd("image", pixdim=(0.5, 0.5), mode="nearest"), DivisiblePadd("image", k=16)])
    labels = identity_through(image, pre)
    out = tmp_path / f"seg{scan_output_suffix(grid)}"
    write_scan_like(labels, grid, out)
    back = np.asarray(Image.open(out)) if out.suffix == ".png" else tifffile.imread(out)
    assert out.suffix == (".tif" if suffix == ".tif" else ".png")
    np.testing.assert_array_equal(back, lab_hw)


def test_probability_maps_keep_the_grid(tmp_path):
    for kind in ("nifti_oblique", "nrrd_oblique"):
        path, lab, affine = make_scan(kind, tmp_path)
        image, grid = load_scan(path)
        probs = torch.nn.functional.one_hot(torch.as_tensor(lab).long(), 3).movedim(-1, 0).float().numpy() * 0.8 + 0.2 / 3
        out = tmp_path / f"{kind}_prob{scan_output_suffix(grid, kind='prob')}"
        write_scan_like(probs, grid, out, kind="prob")
        ref = sitk.ReadImage(str(path))
        if kind.startswith("nifti"):  # channels are the 4th NIfTI dimension: ITK reads a 4D image
            got = sitk.ReadImage(str(out))
            assert got.GetSize() == ref.GetSize() + (3,)
            np.testing.assert_allclose(got.GetOrigin()[:3], ref.GetOrigin(), atol=1e-9)
            np.testing.assert_allclose(np.asarray(got.GetDirection()).reshape(4, 4)[:3, :3].ravel(), ref.GetDirection(), atol=1e-9)
            o = nib.load(out)
            assert o.shape == (*SHAPE, 3)
            np.testing.assert_array_equal(o.affine, nib.load(path).affine)
            np.testing.assert_allclose(np.asarray(o.dataobj), np.moveaxis(probs, 0, -1), atol=1e-6)
        else:  # an ITK vector image on the input's grid
            got = sitk.ReadImage(str(out))
            assert got.GetSize() == ref.GetSize() and got.GetNumberOfComponentsPerPixel() == 3
            np.testing.assert_allclose(got.GetOrigin(), ref.GetOrigin(), atol=1e-9)
            np.testing.assert_allclose(got.GetDirection(), ref.GetDirection(), atol=1e-9)
            np.testing.assert_allclose(sitk.GetArrayFromImage(got), probs.transpose(3, 2, 1, 0), atol=1e-6)


def test_bad_inputs_are_named_with_their_problem(tmp_path):
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(label_map().astype(np.float32), np.eye(4)), good)
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    (tmp_path / "truncated.nii.gz").write_bytes(good.read_bytes()[:300])
    (tmp_path / "text.mha").write_text("this is not an image\n")
    (tmp_path / "notes.txt").write_text("hello\n")
    bad = label_map().astype(np.float32)
    bad[3, 4, 5], bad[0, 0, 1] = np.nan, np.inf
    nib.save(nib.Nifti1Image(bad, np.eye(4)), tmp_path / "nan.nii.gz")
    expected = {
        "empty.nii.gz": "empty (0 bytes)",
        "truncated.nii.gz": "cannot be read as NIfTI",
        "text.mha": "cannot be read as ITK image",
        "notes.txt": "unsupported file type",
        "nan.nii.gz": "2 of 7680 values are NaN or infinite",
        "missing.nii.gz": "file not found",
    }
    for name, reason in expected.items():
        with pytest.raises(ScanReadError) as err:
            load_scan(tmp_path / name)
        assert name in str(err.value) and reason in str(err.value), str(err.value)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import monai_unetzoo.volume_io as vio

    path, lab, _ = make_scan("nifti_ras", tmp_path)
    _, grid = load_scan(path)
    final = tmp_path / "out" / "x_seg.nii.gz"

    def broken_writer(arr, grid, tmp, channels):
        tmp.write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(vio, "_write_nifti", broken_writer)
    with pytest.raises(OSError, match="disk full"):
        write_scan_like(lab, grid, final)
    assert list(final.parent.iterdir()) == []
    monkeypatch.undo()

    # a temporary left by a killed process (simulated) is removed before the case is redone
    stale = final.parent / "x_seg.tmp-99999-abcdef.nii.gz"
    stale.write_bytes(b"partial")
    other = final.parent / "y_seg.tmp-99999-abcdef.nii.gz"
    other.write_bytes(b"partial")
    assert remove_stale_temporaries(final) == [stale]
    assert other.exists() and not stale.exists()

    with atomic_output_path(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.endswith(".nii.gz") and ".tmp-" in tmp.name
        tmp.write_bytes(b"x")
        assert not final.exists()  # nothing under the final name until the rename
    assert final.read_bytes() == b"x"


def test_readonly_input_is_not_modified(tmp_path):
    path, lab, _ = make_scan("nrrd_oblique", tmp_path)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    os.chmod(path, 0o444)
    try:
        image, grid = load_scan(path)
        write_scan_like(lab, grid, tmp_path / "o" / "oblique_seg.nrrd")
    finally:
        os.chmod(path, 0o644)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


# --------------------------------------------------------------------------------------------- real data
@pytest.mark.real_data
def test_hippocampus_identity_on_the_real_grid(hippocampus_dir, tmp_path):
    """A real MSD label volume as input of the identity pipeline: its labels come back voxel for voxel, with the
    input's header geometry (nibabel) and the same ITK geometry (SimpleITK)."""
    src = sorted((hippocampus_dir / "labelsTr").glob("hippocampus_*.nii.gz"))[0]
    ref = nib.load(src)
    ref_lab = np.asarray(ref.dataobj).astype(np.int64)
    image, grid = load_scan(src)
    np.testing.assert_allclose(grid.affine, ref.affine, atol=1e-6)
    labels = identity_through(image, preprocessing_3d())
    np.testing.assert_array_equal(labels, ref_lab)
    out = tmp_path / "seg.nii.gz"
    write_scan_like(labels, grid, out)
    o = nib.load(out)
    np.testing.assert_array_equal(o.affine, ref.affine)
    np.testing.assert_array_equal(np.asarray(o.dataobj), ref_lab)
    a, b = sitk.ReadImage(str(src)), sitk.ReadImage(str(out))
    assert a.GetOrigin() == b.GetOrigin() and a.GetSpacing() == b.GetSpacing() and a.GetDirection() == b.GetDirection()
    # the real image of the same case loads on the same grid
    img, img_grid = load_scan(hippocampus_dir / "imagesTr" / src.name)
    assert img_grid.spatial_shape == ref_lab.shape and np.allclose(img_grid.affine, ref.affine)


@pytest.mark.real_data
def test_isbi_tiff_stack_round_trip(isbi_dir, tmp_path):
    """The real 30-page ISBI 2012 EM stack: MONAI's (x, y, z) array is tifffile's (z, y, x) transposed, and a
    label map written back is a 30-page stack whose pages line up with the input's."""
    src = isbi_dir / "train-volume.tif"
    raw = tifffile.imread(src)  # (30, 512, 512)
    image, grid = load_scan(src)
    assert grid.spatial_shape == raw.shape[::-1]
    np.testing.assert_array_equal(image[0].numpy(), raw.transpose().astype(np.float32))
    labels = (image[0].numpy() > 127).astype(np.uint8)
    out = tmp_path / f"seg{scan_output_suffix(grid)}"
    write_scan_like(labels, grid, out)
    back = tifffile.imread(out)
    assert back.shape == raw.shape
    np.testing.assert_array_equal(back, (raw > 127).astype(np.uint8))
