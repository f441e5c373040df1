"""CT / MRI presets and 3D smoke tests: CT (TotalSegmentator examples) and a 3D TIFF stack (ISBI 2012 EM).

References used by the assertions: the HU window formula computed with numpy on the voxels nibabel reads; a numpy
Dice; the shapes/affines nibabel and tifffile read from the files. The smoke trainings are short (tens of
iterations of tiny networks), so the accuracy bars are loose but far above what an untrained or broken pipeline
gives (an all-background prediction has Dice 0).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_unetzoo.presets import CT_WINDOWS, ct_preprocessing, ct_window_range, mri_preprocessing


def numpy_dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float(2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


# ------------------------------------------------------------------------------------------------ presets


def test_ct_window_range_named_and_explicit():
    assert ct_window_range("abdomen") == (-150.0, 250.0)  # L50 W400
    assert ct_window_range("lung") == (-1350.0, 150.0)  # L-600 W1500
    assert ct_window_range("brain") == (0.0, 80.0)  # L40 W80
    assert ct_window_range((40, 400)) == (-160.0, 240.0)
    for name, (level, width) in CT_WINDOWS.items():
        lo, hi = ct_window_range(name)
        assert hi - lo == pytest.approx(width) and (lo + hi) / 2 == pytest.approx(level)
    with pytest.raises(ValueError, match="unknown CT window 'abdomenn'.*abdomen"):
        ct_window_range("abdomenn")
    with pytest.raises(ValueError, match="width must be > 0"):
        ct_window_range((40, 0))
    with pytest.raises(ValueError, match="level, width"):
        ct_window_range((1, 2, 3))


def test_ct_preset_reorients_and_windows_synthetic(tmp_path):
    """An LPS-stored volume comes out in RAS with the data flipped accordingly and the window applied."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    hu = rng.integers(-1200, 1500, size=(7, 6, 5)).astype(np.int16)
    lab = rng.integers(0, 4, size=(7, 6, 5)).astype(np.uint8)
    affine = np.diag([-1.5, -1.5, 2.0, 1.0])  # L->R and P->A flipped: LPS voxel axes
    nib.save(nib.Nifti1Image(hu, affine), str(tmp_path / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(lab, affine), str(tmp_path / "seg.nii.gz"))
    out = ct_preprocessing(label_keys="label", window=(50, 400))({"image": str(tmp_path / "ct.nii.gz"),
                                                                  "label": str(tmp_path / "seg.nii.gz")})
    expected_hu = hu[::-1, ::-1, :].astype(np.float64)
    expected = np.clip((expected_hu - (-150.0)) / 400.0, 0.0, 1.0)
    assert out["image"].shape == (1, 7, 6, 5)
    np.testing.assert_allclose(out["image"][0].numpy(), expected, atol=1e-6)
    np.testing.assert_array_equal(out["label"][0].numpy(), lab[::-1, ::-1, :])
    assert nib.aff2axcodes(out["image"].affine.numpy()) == ("R", "A", "S")
    # Resampling: labels keep their integer values (nearest neighbour).
    res = ct_preprocessing(label_keys="label", pixdim=(3.0, 3.0, 2.0))({"image": str(tmp_path / "ct.nii.gz"),
                                                                         "label": str(tmp_path / "seg.nii.gz")})
    assert set(np.unique(res["label"].numpy())) <= set(np.unique(lab))
    np.testing.assert_allclose(np.abs(np.diag(res["image"].affine.numpy())[:3]), [3.0, 3.0, 2.0])


def test_ct_preset_on_real_ct_matches_numpy_window(totalseg_dir):
    import nibabel as nib

    img = nib.load(str(totalseg_dir / "example_ct_sm.nii.gz"))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")  # so the preset does not reorder voxels
    hu = np.asarray(img.dataobj).astype(np.float64)
    seg = np.asarray(nib.load(str(totalseg_dir / "example_seg.nii.gz")).dataobj)
    out = ct_preprocessing(label_keys="label", window="abdomen")(
        {"image": str(totalseg_dir / "example_ct_sm.nii.gz"), "label": str(totalseg_dir / "example_seg.nii.gz")})
    np.testing.assert_allclose(out["image"][0].numpy(), np.clip((hu + 150.0) / 400.0, 0, 1), atol=1e-6)
    np.testing.assert_array_equal(out["label"][0].numpy(), seg)
    np.testing.assert_allclose(out["image"].affine.numpy(), img.affine, atol=1e-5)


def test_mri_preset_zscores(hippocampus_dir):
    import nibabel as nib

    path = sorted((hippocampus_dir / "imagesTr").glob("*.nii.gz"))[0]
    raw = np.asarray(nib.load(str(path)).dataobj).astype(np.float64)
    out = mri_preprocessing()({"image": str(path)})["image"][0].numpy()
    assert out.shape == raw.shape  # Task04 is 1 mm RAS already
    np.testing.assert_allclose(out, (raw - raw.mean()) / raw.std(), atol=1e-4)
    nz = mri_preprocessing(nonzero=True)({"image": str(path)})["image"][0].numpy()
    inside = raw != 0
    np.testing.assert_array_equal(nz[~inside], 0.0)
    np.testing.assert_allclose(nz[inside], (raw[inside] - raw[inside].mean()) / raw[inside].std(), atol=1e-4)


# ------------------------------------------------------------------------------------------------ CT smoke


@pytest.mark.real_data
def test_ct_end_to_end_smoke(totalseg_dir, tmp_path):
    """Train a tiny ResUNet on the liver of example_ct_sm, sliding-window-predict example_ct, write it on its grid.

    Both volumes are resampled to 6 mm (the preset's ``pixdim``) to keep the test fast; the prediction is brought
    back to example_ct's own 3 mm grid with MONAI's ``Invertd`` (which undoes the preset's resampling).
    """
    import nibabel as nib
    from monai.data import MetaTensor
    from monai.losses import DiceCELoss
    from monai.transforms import Invertd, RandFlipd, SaveImage, SpatialPadd
    from monai.utils import set_determinism

    from monai_unetzoo.inference import SlidingWindowPredictor
    from monai_unetzoo.networks import ResUNet

    set_determinism(0)
    liver = 5  # TotalSegmentator v2 "total" class map
    pixdim = (6.0, 6.0, 6.0)
    pre = ct_preprocessing(label_keys="label", window="abdomen", pixdim=pixdim)
    item = pre({"image": str(totalseg_dir / "example_ct_sm.nii.gz"), "label": str(totalseg_dir / "example_seg.nii.gz")})
    item["label"] = (item["label"] == liver).float()
    item = SpatialPadd(keys=["image", "label"], spatial_size=(64, 56, 16))(item)
    flip = RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=0)
    flip.set_random_state(0)
    # channels-last: about 2x faster here on CPU (in NCDHW PyTorch runs the 1x1x1 shortcuts with slow non-oneDNN kernels)
    net = ResUNet(3, 1, 2, features=(8, 16, 32)).to(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(net.parameters(), 5e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    losses = []
    for _ in range(16):
        sample = flip(item)
        loss = loss_fn(net(sample["image"].as_tensor()[None]), sample["label"].as_tensor()[None])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4])

    big_pre = ct_preprocessing(window="abdomen", pixdim=pixdim)
    big = big_pre({"image": str(totalseg_dir / "example_ct.nii.gz")})
    ref = nib.load(str(totalseg_dir / "example_ct.nii.gz"))
    assert tuple(big["image"].shape[1:]) != ref.shape  # really resampled
    predictor = SlidingWindowPredictor(roi_size=(64, 48, 32), sw_batch_size=4, overlap=0.25)
    labels = predictor.predict_labels(big["image"][None], net)[0]  # (1, X', Y', Z') on the 6 mm grid
    assert tuple(labels.shape[1:]) == tuple(big["image"].shape[1:])
    big["pred"] = MetaTensor(labels.clone().float(), affine=big["image"].affine)
    inverted = Invertd(keys="pred", transform=big_pre, orig_keys="image", nearest_interp=True)(big)["pred"]
    assert tuple(inverted.shape[1:]) == ref.shape == (122, 101, 112)
    SaveImage(output_dir=str(tmp_path), output_postfix="liver", separate_folder=False, resample=False,
              output_dtype=np.uint8, print_log=False)(inverted)
    saved = nib.load(str(tmp_path / "example_ct_liver.nii.gz"))
    assert saved.shape == ref.shape
    np.testing.assert_allclose(saved.affine, ref.affine, atol=1e-4)
    # example_ct_sm holds the voxels of example_ct's last 30 slices (its header keeps example_ct's origin), so the
    # prediction there can be scored against example_seg. Verify that correspondence instead of trusting it.
    ct_big, ct_sm = np.asarray(ref.dataobj), np.asarray(nib.load(str(totalseg_dir / "example_ct_sm.nii.gz")).dataobj)
    offset = ct_big.shape[2] - ct_sm.shape[2]
    assert np.array_equal(ct_big[:, :, offset:].astype(np.int32), ct_sm.astype(np.int32))
    seg = np.asarray(nib.load(str(totalseg_dir / "example_seg.nii.gz")).dataobj) == liver
    pred_slab = np.asarray(saved.dataobj)[:, :, offset:] == 1
    dice = numpy_dice(pred_slab, seg)
    print(f"liver Dice on the labelled slab after {len(losses)} iterations: {dice:.3f}")
    assert dice > 0.5


# ------------------------------------------------------------------------------------------------ TIFF stack


@pytest.mark.real_data
def test_isbi_tiff_stack_smoke(isbi_dir, tmp_path):
    """Load the 30x512x512 EM stack through MONAI (ITK), train a 2D ClassicUNet on slice crops, predict the stack."""
    import tifffile
    from monai.inferers import SliceInferer
    from monai.transforms import LoadImage
    from monai.utils import set_determinism

    from monai_unetzoo.networks import ClassicUNet

    set_determinism(0)
    loader = LoadImage(reader="ITKReader", image_only=True, ensure_channel_first=True)
    vol = loader(str(isbi_dir / "train-volume.tif"))  # ITK order: (1, X=512, Y=512, Z=30)
    lab = loader(str(isbi_dir / "train-labels.tif"))
    ref = tifffile.imread(str(isbi_dir / "train-volume.tif"))  # (Z, Y, X) = (30, 512, 512)
    assert tuple(vol.shape) == (1, *ref.shape[::-1])
    np.testing.assert_array_equal(vol[0].numpy().transpose(2, 1, 0), ref)
    image = (vol.as_tensor() / 255.0 - 0.5) / 0.25
    membrane = (lab.as_tensor() < 128).long()  # 0 = membrane in the ISBI labels

    net = ClassicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(8, 16, 32))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    weights = torch.tensor([1.0, 3.0])  # membranes are ~22 % of the pixels
    gen = torch.Generator().manual_seed(0)
    for _ in range(25):
        z = torch.randint(0, image.shape[-1], (4,), generator=gen)
        xy = torch.randint(0, 512 - 96, (4, 2), generator=gen)
        x = torch.stack([image[:, a:a + 96, b:b + 96, k] for (a, b), k in zip(xy.tolist(), z.tolist())])
        y = torch.stack([membrane[0, a:a + 96, b:b + 96, k] for (a, b), k in zip(xy.tolist(), z.tolist())])
        loss = torch.nn.functional.cross_entropy(net(x), y, weight=weights)
        opt.zero_grad()
        loss.backward()
        opt.step()

    net.eval()
    inferer = SliceInferer(roi_size=(256, 256), sw_batch_size=4, spatial_dim=2, overlap=0.0)  # 4 windows per slice
    with torch.no_grad():
        pred = inferer(image[None], net).argmax(1)[0]  # (X, Y, Z)
    assert tuple(pred.shape) == tuple(vol.shape[1:])
    stack = pred.numpy().transpose(2, 1, 0).astype(np.uint8)  # back to the file's (Z, Y, X)
    tifffile.imwrite(str(tmp_path / "membranes.tif"), stack * 255)
    back = tifffile.imread(str(tmp_path / "membranes.tif"))
    assert back.shape == ref.shape == (30, 512, 512)
    truth = tifffile.imread(str(isbi_dir / "train-labels.tif")) < 128
    dice = numpy_dice(back > 0, truth)
    print(f"membrane Dice over the stack after 25 iterations: {dice:.3f}")
    # Calling every pixel membrane scores 2 * 0.22 / 1.22 = 0.36 (membranes are 22 % of the pixels); 25 iterations
    # give about 0.6 here.
    assert dice > 0.5
