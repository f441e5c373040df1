"""``unetzoo plan`` (issue 20): fingerprints against numpy, the planning rules, refused data sets, and a planned
bundle that passes the model-zoo checks, trains through ``monai.bundle run training`` and predicts with
``unetzoo predict``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_unetzoo.bundle_checks import inference_config_key_problems, zoo_conformance_problems
from monai_unetzoo.data.msd import MSDDatasetError
from monai_unetzoo.planning import DatasetFingerprintError, fingerprint_dataset
from monai_unetzoo.planning.rules import (
    ANISOTROPY_RATIO,
    plan_mirror_axes,
    plan_normalisation,
    plan_patch_and_depth,
    plan_target_spacing,
    pools_per_axis,
)
from monai_unetzoo.planning.writer import planned_load_transforms

from conftest import require_data
from unetzoo_cli import main

REPO = Path(__file__).resolve().parents[1]


def _case(shape, seed, offset=100.0, scale=20.0):
    """(image, label): a noisy image whose box of class 1 and smaller box of class 2 are brighter."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    sl = tuple(slice(s // 4, 3 * s // 4) for s in shape)
    label[sl] = 1
    label[tuple(slice(s // 2, 3 * s // 4) for s in shape)] = 2
    image = (offset + scale * rng.standard_normal(shape) + 50.0 * label).astype(np.float32)
    return image, label


def write_folder(root: Path, cases, modality="MRI", labels=None) -> Path:
    """An MSD folder of (image, label, affine) NIfTI pairs, written here with nibabel."""
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    training = []
    for i, (image, label, affine) in enumerate(cases):
        name = f"case_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / name))
        nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / name))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    content = {"name": "synthetic", "modality": {"0": modality},
               "labels": labels or {"0": "background", "1": "outer", "2": "inner"}, "training": training}
    (root / "dataset.json").write_text(json.dumps(content))
    return root


def _three_cases():
    specs = [((20, 24, 16), (1.0, 1.0, 2.0)), ((22, 24, 18), (0.8, 1.0, 2.5)), ((18, 20, 16), (1.2, 1.1, 3.0))]
    return [(*_case(shape, i, offset=100.0 * (i + 1)), np.diag([*sp, 1.0])) for i, (shape, sp) in enumerate(specs)]


# --------------------------------------------------------------------------------------------------- fingerprint


def test_fingerprint_matches_numpy(tmp_path):
    cases = _three_cases()
    fp = fingerprint_dataset(write_folder(tmp_path / "d", cases))
    assert fp.spatial_dims == 3 and fp.channels == 1 and len(fp.cases) == 3
    for case, (image, label, affine) in zip(fp.cases, cases):
        spacing = np.diag(affine)[:3]
        assert case.shape == list(image.shape) and np.allclose(case.spacing, spacing)
        assert case.orientation == "RAS"
        fg = image[label > 0].astype(np.float64)
        st = case.intensity[0]
        np.testing.assert_allclose([st["p0.5"], st["p50"], st["p99.5"]], np.percentile(fg, [0.5, 50, 99.5]),
                                   rtol=1e-6)
        np.testing.assert_allclose([st["mean"], st["std"]], [fg.mean(), fg.std()], rtol=1e-6)
        for k in range(3):
            assert case.class_voxels[str(k)] == int((label == k).sum())
            assert case.class_volume[str(k)] == pytest.approx((label == k).sum() * np.prod(spacing))
    everything = np.concatenate([lab.ravel() for _, lab, _ in cases])
    for k in range(3):
        assert fp.class_frequencies[str(k)] == pytest.approx(np.mean(everything == k))
    pooled = np.concatenate([img[lab > 0] for img, lab, _ in cases]).astype(np.float64)  # < 10000 per case
    assert fp.foreground_intensity[0]["mean"] == pytest.approx(pooled.mean())
    assert fp.foreground_intensity[0]["p99.5"] == pytest.approx(np.percentile(pooled, 99.5))
    assert fp.median_spacing == pytest.approx(list(np.median([np.diag(a)[:3] for *_, a in cases], axis=0)))


def test_fingerprint_reads_lps_files_in_the_ras_training_frame(tmp_path):
    """An LPS file (x and y flipped): its orientation is recorded, shape/spacing are those of the RAS grid, and
    the statistics are unchanged (a flip moves voxels, it does not change them)."""
    image, label = _case((20, 24, 16), 0)
    lps = np.diag([-1.5, -1.0, 2.0, 1.0])
    # axes permuted too: file axes (16, 20, 24) voxels point S, L, P (2, 1, 1.5 mm): RAS x, y, z = file 1, 2, 0
    perm = np.array([[0, -1.0, 0, 0], [0, 0, -1.5, 0], [2.0, 0, 0, 0], [0, 0, 0, 1]])
    cases = [(image, label, lps), (np.transpose(image, (2, 0, 1)).copy(), np.transpose(label, (2, 0, 1)).copy(),
                                   perm)]
    fp = fingerprint_dataset(write_folder(tmp_path / "d", cases))
    assert fp.cases[0].orientation == "LPS" and fp.cases[0].shape == [20, 24, 16]
    assert fp.cases[0].spacing == pytest.approx([1.5, 1.0, 2.0])
    assert fp.cases[1].orientation == "SLP" and fp.cases[1].shape == [20, 24, 16]
    assert fp.cases[1].spacing == pytest.approx([1.0, 1.5, 2.0])
    assert fp.cases[1].intensity[0]["mean"] == pytest.approx(image[label > 0].mean(), rel=1e-6)


# ------------------------------------------------------------------------------------------------------- rules


def test_anisotropic_data_keeps_the_coarse_axis():
    """0.7 mm in-plane, 4-6 mm slices, 20 slices of 256x256: the slice axis stays coarse (nnU-Net's 10th
    percentile of its spacings), never resampled to the in-plane 0.7 mm."""
    rng = np.random.default_rng(0)
    z = rng.uniform(4.0, 6.0, 12)
    spacings = np.stack([np.full(12, 0.7), np.full(12, 0.7), z], axis=1)
    shapes = np.tile([256, 256, 20], (12, 1))
    rule = plan_target_spacing(spacings, shapes)
    assert rule.value[:2] == pytest.approx([0.7, 0.7])
    assert rule.value[2] == pytest.approx(np.percentile(z, 10), abs=1e-4)
    assert rule.value[2] > ANISOTROPY_RATIO * 0.7 and "anisotropic" in rule.reason
    iso = plan_target_spacing(np.tile([1.0, 1.0, 1.2], (5, 1)), np.tile([100, 100, 90], (5, 1)))
    assert iso.value == pytest.approx([1.0, 1.0, 1.2])
    # the patch keeps the coarse axis short and is not pooled along it until the in-plane axes reach its spacing
    assert pools_per_axis([160, 160, 20], [0.7, 0.7, 4.2]) == [5, 5, 2]  # z joins at the 3rd pooling (2.8 mm vs 4.2)
    patch, kernels, _ = plan_patch_and_depth([256, 256, 20], rule.value, "cpu", 2, 1)
    z_pools = sum(k[2] == 2 for k in kernels.value)
    assert patch.value[2] < patch.value[0] / 2 and z_pools < len(kernels.value) and 2 ** z_pools <= patch.value[2]
    assert kernels.value[0] == [2, 2, 1]  # the coarse axis is not pooled at the first level


#: nnU-Net v2's own pooling plans (``nnunetv2.experiment_planning.experiment_planners.network_topology.
#: get_pool_and_conv_props(spacing, patch, 4, 999999)``, nnunetv2 2.8.1): (spacing, patch) -> pool kernels per level.
NNUNET_POOL_KERNELS = [
    ([0.7, 0.7, 4.2], [160, 160, 20], [[2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 1]]),
    ([1, 1, 1], [36, 50, 35], [[2, 2, 2], [2, 2, 2], [2, 2, 2]]),
    ([3.0, 0.8, 0.8], [20, 192, 160], [[1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]]),
    ([1.0, 1.0, 1.0], [128, 128, 8], [[2, 2, 2], [2, 2, 1], [2, 2, 1], [2, 2, 1], [2, 2, 1]]),
    ([1, 1], [256, 256], [[2, 2]] * 6),  # nnU-Net: 6 levels; ours stops at MAX_DEPTH = 5
]


@pytest.mark.parametrize("spacing, patch, expected", NNUNET_POOL_KERNELS)
def test_pool_kernels_are_nnunets(spacing, patch, expected):
    from monai_unetzoo.planning.rules import MAX_DEPTH, pool_kernels

    assert pool_kernels(patch, spacing) == expected[:MAX_DEPTH]


@pytest.mark.parametrize("name", ["resunet", "unet", "unetpp"])
def test_per_axis_pooling_in_every_network(name):
    """nnU-Net's anisotropic kernels as ``pool_sizes``: the bottleneck of a patch-sized input is patch /
    2**(poolings per axis) -- (5, 5, 5) for 160 x 160 x 20 -- and the output is on the input grid."""
    import torch

    from monai_unetzoo.networks import get_network

    kernels = NNUNET_POOL_KERNELS[0][2]
    net = get_network(name, spatial_dims=3, in_channels=1, out_channels=2, features=[4, 4, 8, 8, 8, 8],
                      pool_sizes=kernels).eval()
    deepest = net.encoder[-1] if name != "unetpp" else net.backbone[-1]
    seen = []
    deepest.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[2:])))
    with torch.no_grad():
        out = net(torch.zeros(1, 1, 160, 160, 20))
    assert tuple(out.shape) == (1, 2, 160, 160, 20) and seen == [(5, 5, 5)]


def test_mirror_axes_respect_lateral_labels():
    assert plan_mirror_axes(["Anterior", "Posterior"], 3).value == [0, 2]
    assert plan_mirror_axes(["left kidney", "right_kidney"], 3).value == [1, 2]
    assert plan_mirror_axes(["kidney_L", "liver"], 3).value == [1, 2]
    assert plan_mirror_axes(["liver", "tumour"], 3).value == [0, 1, 2]
    assert plan_mirror_axes(["vessel"], 2).value == [0, 1]


def test_ct_normalisation_is_clip_then_dataset_zscore():
    """The planned CT transform equals numpy's (clip(x, p0.5, p99.5) - mean) / std with the data-set statistics."""
    from monai.bundle import ConfigParser

    stats = [{"p0.5": -900.0, "p99.5": 400.0, "mean": 40.0, "std": 120.0}]
    rule = plan_normalisation({"0": "CT"}, stats)
    assert rule.value == {"scheme": "ct", "clip": [-900.0, 400.0], "mean": 40.0, "std": 120.0}
    assert plan_normalisation({"0": "T2", "1": "ADC"}, stats).value == {"scheme": "zscore"}

    class Plan:  # the fields planned_load_transforms reads
        normalisation, spatial_dims, pixdim, roi = rule.value, 3, None, None

    transform = ConfigParser({"t": planned_load_transforms(Plan, ["image"])[-1]}).get_parsed_content("t")
    x = np.random.default_rng(0).uniform(-1500, 1500, (1, 8, 8, 8)).astype(np.float32)
    out = np.asarray(transform({"image": x})["image"])
    np.testing.assert_allclose(out, (np.clip(x, -900, 400) - 40) / 120, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- refused data sets


def test_bad_datasets_are_refused_naming_the_files(tmp_path):
    cases = _three_cases()
    one = write_folder(tmp_path / "one", cases[:1])
    with pytest.raises(DatasetFingerprintError, match="1 training case"):
        fingerprint_dataset(one)
    unknown = write_folder(tmp_path / "unknown", cases, modality="XRF")
    with pytest.raises(DatasetFingerprintError, match=r"unknown modality 'XRF'") as err:
        fingerprint_dataset(unknown)
    assert str(unknown / "dataset.json") in str(err.value)
    missing = write_folder(tmp_path / "missing", cases)
    (missing / "labelsTr" / "case_001.nii.gz").unlink()
    with pytest.raises(MSDDatasetError, match="case_001.nii.gz"):
        fingerprint_dataset(missing)
    geometry = write_folder(tmp_path / "geometry", cases)
    image, label, affine = cases[2]
    nib.save(nib.Nifti1Image(label[:, :, :-2], affine), str(geometry / "labelsTr" / "case_002.nii.gz"))
    with pytest.raises(MSDDatasetError, match=r"labelsTr/case_002.nii.gz: label shape"):
        fingerprint_dataset(geometry)
    values = write_folder(tmp_path / "values", cases, labels={"0": "background", "1": "outer"})
    with pytest.raises(DatasetFingerprintError, match=r"case_000.nii.gz: label values") as err:
        fingerprint_dataset(values)
    assert "case_001.nii.gz" in str(err.value) and "case_002.nii.gz" in str(err.value)


def test_nrrd_label_on_another_grid_is_refused(tmp_path):
    """NRRD headers are not checked by the datalist builder; the fingerprint compares the loaded affines."""
    import SimpleITK as sitk

    root = tmp_path / "nrrd"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i, (image, label, affine) in enumerate(_three_cases()[:2]):
        img, lab = sitk.GetImageFromArray(image.T.copy()), sitk.GetImageFromArray(label.T.copy())
        img.SetSpacing(tuple(float(v) for v in np.diag(affine)[:3]))
        lab.SetSpacing(tuple(float(v) for v in np.diag(affine)[:3] * (1.5 if i == 1 else 1.0)))
        sitk.WriteImage(img, str(root / "imagesTr" / f"c{i}.nrrd"))
        sitk.WriteImage(lab, str(root / "labelsTr" / f"c{i}.nrrd"))
        training.append({"image": f"./imagesTr/c{i}.nrrd", "label": f"./labelsTr/c{i}.nrrd"})
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "T2"}, "training": training,
                                                   "labels": {"0": "background", "1": "outer", "2": "inner"}}))
    with pytest.raises(DatasetFingerprintError, match=r"labelsTr/c1.nrrd: label geometry \(affine\) differs") as err:
        fingerprint_dataset(root)
    assert "c0.nrrd" not in str(err.value)


def test_cli_refuses_with_exit_2(tmp_path, capsys):
    one = write_folder(tmp_path / "one", _three_cases()[:1])
    assert main(["plan", "--dataset", str(one), "--output", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert str(one / "dataset.json") in err and "at least 2" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()
    two = write_folder(tmp_path / "two", _three_cases())
    assert main(["plan", "--dataset", str(two), "--output", str(REPO / "bundles" / "hippocampus")]) == 2
    assert "not written by unetzoo plan" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ the planned bundle


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """A bundle planned by the CLI from a 5-case synthetic MSD folder (about 20^3 voxels at 1 x 1 x 2 mm)."""
    root = tmp_path_factory.mktemp("plan")
    cases = [(*_case((20, 20, 10), i), np.diag([1.0, 1.0, 2.0, 1.0])) for i in range(5)]
    data = write_folder(root / "data", cases, labels={"0": "background", "1": "left part", "2": "core"})
    (data / "imagesTs").mkdir()
    nib.save(nib.Nifti1Image(_case((22, 18, 11), 9)[0], np.diag([1.0, 1.0, 2.0, 1.0])),
             str(data / "imagesTs" / "test_000.nii.gz"))
    assert main(["plan", "--dataset", str(data), "--output", str(root / "bundle"), "--budget-minutes", "0.05"]) == 0
    return root / "bundle", data


def test_planned_bundle_follows_the_plan(planned):
    bundle, _ = planned
    meta = json.loads((bundle / "metadata.json").read_text())
    train = json.loads((bundle / "train.json").read_text())
    assert train["pixdim"] == pytest.approx([1.0, 1.0, 2.0])  # the median, data not anisotropic enough to change
    assert train["patch_size"] == [20, 20, 10] and train["network_def"]["features"] == [16, 32, 64]
    assert train["network_def"]["pool_sizes"] == [[2, 2, 1], [2, 2, 2]]  # 2 mm z waits for x, y to reach 2 mm
    assert train["num_classes"] == 3 and train["class_names"] == ["left part", "core"]
    flips = [t["spatial_axis"] for t in train["train"]["random_transforms"] if t["_target_"] == "RandFlipd"]
    assert flips == [1, 2]  # "left part": never mirrored across the left-right axis
    assert meta["fingerprint"]["median_shape"] == [20, 20, 10] and len(meta["fingerprint"]["cases"]) == 5
    assert {r["name"] for r in meta["plan"]["rules"]} >= {"target spacing (mm)", "patch size (voxels)", "epochs"}
    readme = (bundle / "README.md").read_text()
    assert "| mirror axes | [1, 2] |" in readme
    headings = [line[3:].strip().lower() for line in readme.splitlines() if line.startswith("## ")]
    for section in ("overview", "data", "training", "performance", "commands", "torchscript and onnx",
                    "references", "data licence"):  # the zoo template's sections, as test_bundle_conformance
        assert any(h.startswith(section) for h in headings), (section, headings)


def test_planned_bundle_passes_the_zoo_checks(planned, bundle_schema):
    from monai.bundle import verify_metadata

    bundle, _ = planned
    assert zoo_conformance_problems(bundle) == {}
    assert inference_config_key_problems(json.loads((bundle / "inference.json").read_text())) == {}
    verify_metadata(meta_file=str(bundle / "metadata.json"), filepath=str(bundle_schema))


@pytest.mark.parametrize("kind, configs", [("train", ["train.json"]), ("eval", ["train.json", "evaluate.json"]),
                                            ("infer", ["inference.json"])])
def test_planned_bundle_workflows_have_monai_s_properties(planned, tmp_path, kind, configs):
    """MONAI's ``ConfigWorkflow.check_properties`` for the three workflows and ``verify_net_in_out`` at its
    defaults, as tests/test_bundle_conformance.py runs them on the hand-written bundles."""
    from monai.bundle import ConfigWorkflow, verify_net_in_out

    bundle, data = planned
    files = [str(bundle / c) for c in configs]
    workflow = ConfigWorkflow(config_file=files if len(files) > 1 else files[0], logging_file=False,
                              meta_file=str(bundle / "metadata.json"), workflow_type=kind,
                              output_dir=str(tmp_path / "models"), num_workers=0, num_threads=1)
    workflow.initialize()
    assert workflow.check_properties() == []
    assert workflow.bundle_root == str(bundle.resolve())
    if kind == "train":
        assert workflow.dataset_dir == str(data.resolve())
        verify_net_in_out(net_id="network_def", meta_file=str(bundle / "metadata.json"), config_file=files[0])


def test_planned_bundle_trains_and_predicts(planned, tmp_path):
    """2 training iterations through MONAI's bundle runner, then ``unetzoo predict`` with the weights it saved:
    the segmentation lies on the input's grid."""
    bundle, data = planned
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")
    out = tmp_path / "models"
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                           str(bundle / "train.json"), "--output_dir", str(out), "--epochs", "1", "--epoch_length",
                           "2", "--val_interval", "1", "--num_val_cases", "1", "--num_threads", "2"],
                          cwd=REPO, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Epoch[1] Complete" in proc.stdout + proc.stderr and (out / "model.pt").is_file()
    pred = tmp_path / "pred"
    code = main(["predict", "--bundle", str(bundle), "--checkpoint", str(out / "model.pt"), "--input",
                 str(data / "imagesTs"), "--output", str(pred), "--device", "cpu", "--quiet"])
    assert code == 0
    seg = nib.load(str(pred / "test_000_seg.nii.gz"))
    assert seg.shape == (22, 18, 11) and np.allclose(seg.affine, np.diag([1.0, 1.0, 2.0, 1.0]))
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}


# ------------------------------------------------------------------------------------------------- real data


def test_plan_for_task04_hippocampus():
    """20 sampled Task04 cases: 1 mm spacing, a patch about the data size (median shape rounded up to 8), the
    shape/spacing of every case as nibabel reads it (the crops are stored RAS)."""
    root = require_data("Task04_Hippocampus")
    fp = fingerprint_dataset(root, max_cases=20, seed=0)
    assert len(fp.cases) == 20 and fp.num_cases_total == len(json.loads((root / "dataset.json").read_text())
                                                             ["training"])
    for case in fp.cases[:5]:
        img = nib.load(case.image)
        assert case.shape == list(img.shape) and case.spacing == pytest.approx(list(img.header.get_zooms()))
    spacing = plan_target_spacing(fp.spacings(), fp.shapes())
    assert spacing.value == pytest.approx([1.0, 1.0, 1.0])
    patch, kernels, _ = plan_patch_and_depth(fp.median_shape, spacing.value, "cpu", 2, 1)
    assert kernels.value == [[2, 2, 2]] * 3  # as the hand-written bundle (features 16..128)
    assert all(m <= p < m + 2 ** 3 for m, p in zip(fp.median_shape, patch.value))
    assert plan_normalisation(fp.modality, fp.foreground_intensity).value == {"scheme": "zscore"}
    assert plan_mirror_axes(list(fp.labels.values())[1:], 3).value == [0, 2]


def test_2d_png_dataset_is_planned_on_its_pixel_grid(tmp_path, capsys):
    """RGB PNGs: shapes as PIL reads them (H, W without index reversal, the DRIVE loader), 3 channels, the
    pixel grid kept (no reorientation or resampling), both axes mirrored, a bundle passing the zoo checks."""
    from PIL import Image

    root = tmp_path / "png"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training, labels = [], []
    for i in range(3):
        label = np.zeros((40, 56), np.uint8)
        label[8 + i:30, 10:40] = 1
        image = (np.random.default_rng(i).uniform(0, 100, (40, 56, 3)) + 100 * label[..., None]).astype(np.uint8)
        Image.fromarray(image).save(root / "imagesTr" / f"c{i}.png")
        Image.fromarray(label).save(root / "labelsTr" / f"c{i}.png")
        training.append({"image": f"./imagesTr/c{i}.png", "label": f"./labelsTr/c{i}.png"})
        labels.append(label)
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "RGB"}, "labels": {"0": "bg", "1": "cell"},
                                                   "training": training}))
    fp = fingerprint_dataset(root)
    assert fp.spatial_dims == 2 and fp.channels == 3 and fp.cases[0].shape == [40, 56]
    assert fp.class_frequencies["1"] == pytest.approx(np.mean(np.stack(labels)))
    assert main(["plan", "--dataset", str(root), "--output", str(tmp_path / "b"), "--budget-minutes", "0.05"]) == 0
    train = json.loads((tmp_path / "b" / "train.json").read_text())
    load = train["load_transforms"]
    assert load[0]["reader"] == "PILReader" and load[0]["reverse_indexing"] is False
    assert not {"Orientationd", "Spacingd"} & {t["_target_"] for t in load}
    assert train["network_def"]["spatial_dims"] == 2 and train["network_def"]["in_channels"] == 3
    assert [t["spatial_axis"] for t in train["train"]["random_transforms"] if t["_target_"] == "RandFlipd"] == [0, 1]
    assert zoo_conformance_problems(tmp_path / "b") == {}


# ----------------------------------------------------------------------------- region-of-interest masks (DRIVE)


def _fundus_like(seed: int, size: int = 48):
    """(RGB image, label, roi): a bright disc (the ROI) on a dark surround, dark stripes (label 1) inside it and a
    stripe of label 1 outside it, which the ROI must exclude from the loss and the Dice."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    roi = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.4 * size) ** 2).astype(np.uint8)
    label = np.zeros((size, size), np.uint8)
    label[:, 20 + seed:23 + seed] = 1
    label &= roi
    label[1:3, 2:10] = 1  # outside the disc
    grey = np.where(roi > 0, rng.uniform(110, 200, roi.shape) - 60 * label, rng.uniform(0, 8, roi.shape))
    image = np.repeat(grey[..., None], 3, axis=-1).clip(0, 255).astype(np.uint8)
    return image, label, roi


def _write_roi_folder(root: Path, n: int = 6) -> Path:
    from PIL import Image

    for sub in ("imagesTr", "labelsTr", "roisTr", "imagesTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(n):
        image, label, roi = _fundus_like(i)
        for sub, arr in (("imagesTr", image), ("labelsTr", label), ("roisTr", roi)):
            Image.fromarray(arr).save(root / sub / f"c{i}.png")
        training.append({"image": f"./imagesTr/c{i}.png", "label": f"./labelsTr/c{i}.png",
                         "roi": f"./roisTr/c{i}.png"})
    Image.fromarray(_fundus_like(9)[0]).save(root / "imagesTs" / "t9.png")
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "fundus"}, "training": training,
                                                   "labels": {"0": "background", "1": "vessel"}}))
    return root


def test_roi_threshold_dice_matches_numpy():
    """The threshold search's Dice, from samples that are every pixel here, equals Dice computed with numpy."""
    from monai_unetzoo.planning.fingerprint import best_roi_threshold, roi_intensity_samples, roi_threshold_dice

    rng = np.random.default_rng(0)
    cases = [_fundus_like(i) for i in range(3)]
    samples = [roi_intensity_samples(np.moveaxis(img, -1, 0), roi, rng) for img, _, roi in cases]
    for t in (4.0, 30.0, 120.0):
        expected = [2 * ((img[..., 0] > t) & (roi > 0)).sum() / ((img[..., 0] > t).sum() + roi.sum())
                    for img, _, roi in cases]
        assert roi_threshold_dice(samples, [t])[:, 0] == pytest.approx(expected)
    best = best_roi_threshold(samples)
    assert 7 <= best["threshold"] < 50 and best["min_dice"] == 1.0  # surround <= 7 (uint8), darkest inside 50


def test_roi_masks_are_planned_as_the_drive_bundle_handles_its_fov(tmp_path):
    """A data set with ``roi`` masks: the plan keeps the label outside the ROI out of the loss (ignore value),
    counts validation Dice inside it (checked against numpy), and the trained bundle's ``unetzoo predict`` writes
    background outside the ROI it estimates from the image."""
    import torch
    from monai.bundle import ConfigParser
    from monai.handlers import from_engine
    from monai.metrics import DiceMetric
    from PIL import Image

    data = _write_roi_folder(tmp_path / "data")
    fp = fingerprint_dataset(data)
    assert fp.has_roi and fp.cases[0].roi_fraction == pytest.approx(_fundus_like(0)[2].mean())
    bundle = tmp_path / "bundle"
    assert main(["plan", "--dataset", str(data), "--output", str(bundle), "--budget-minutes", "0.05"]) == 0
    train = json.loads((bundle / "train.json").read_text())
    assert train["loss"]["_target_"].endswith("MaskedDiceCELoss") and train["loss"]["ignore_index"] == 255
    assert zoo_conformance_problems(bundle) == {}

    parser = ConfigParser()
    parser.read_config(str(bundle / "train.json"))
    parser["num_workers"] = 0
    batch = next(iter(parser.get_parsed_content("train#dataloader")))
    _, label = parser.get_parsed_content("train#prepare_batch")(batch)
    outside = batch["roi"] <= 0.5
    assert torch.all(label[outside] == 255) and torch.all(label[~outside] == batch["label"][~outside])

    image, truth, roi = _fundus_like(0)
    logits = torch.zeros((2, *truth.shape))
    logits[1] = torch.as_tensor(np.where(image[..., 0] < 120, 5.0, -5.0))  # a guess with errors in and out
    post = parser.get_parsed_content("validate#postprocessing")
    item = post({"pred": logits, "label": torch.as_tensor(truth)[None].float(), "roi": torch.as_tensor(roi)[None]})
    pred_fg, truth_in = (image[..., 0] < 120) & (roi > 0), (truth > 0) & (roi > 0)
    expected = 2 * (pred_fg & truth_in).sum() / (pred_fg.sum() + truth_in.sum())
    key_metric = next(iter(train["validate"]["key_metric"].values()))
    assert key_metric["_target_"] == "MeanDice" and key_metric["include_background"] is False
    pred_onehot, label_onehot = from_engine(["pred", "label"])([item])
    dice = DiceMetric(include_background=False)(pred_onehot[0][None], label_onehot[0][None])
    assert float(dice) == pytest.approx(expected)

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2")
    out = tmp_path / "models"
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                           str(bundle / "train.json"), "--output_dir", str(out), "--epochs", "1", "--epoch_length",
                           "2", "--val_interval", "1", "--num_threads", "2"],
                          cwd=REPO, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pred = tmp_path / "pred"
    assert main(["predict", "--bundle", str(bundle), "--checkpoint", str(out / "model_last.pt"), "--input",
                 str(data / "imagesTs"), "--output", str(pred), "--device", "cpu", "--quiet", "--no-preview"]) == 0
    seg = np.asarray(Image.open(next(pred.glob("t9*.png"))))
    assert seg.shape == (48, 48)
    assert not seg[_fundus_like(9)[2] == 0].any()  # background wherever the estimated FOV (= the disc) is not


def test_bad_roi_masks_are_refused_naming_the_files(tmp_path):
    """A mask off its image's grid, an empty mask, and masks for only some of the cases."""
    from PIL import Image

    data = _write_roi_folder(tmp_path / "data", n=3)
    Image.fromarray(np.ones((20, 30), np.uint8)).save(data / "roisTr" / "c1.png")
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(data / "roisTr" / "c2.png")
    with pytest.raises(DatasetFingerprintError) as err:
        fingerprint_dataset(data)
    problems = dict(err.value.problems)
    assert "not one channel on its image's grid" in problems[str(data / "roisTr" / "c1.png")]
    assert "empty" in problems[str(data / "roisTr" / "c2.png")]
    content = json.loads((data / "dataset.json").read_text())
    del content["training"][0]["roi"]
    (data / "dataset.json").write_text(json.dumps(content))
    with pytest.raises(MSDDatasetError, match='2 of 3 training cases list a "roi" mask'):
        fingerprint_dataset(data)


def test_plan_for_drive_recovers_its_fov_masks(tmp_path):
    """Real DRIVE as an MSD folder with its FOV masks as ``roi``: the planned inference's ROI estimate, chosen on
    the 20 training images, reproduces the 20 *test* images' own FOV masks (Dice >= 0.99 each, an independent
    check on images the choice never saw); the plan trains inside the FOV."""
    from PIL import Image

    from monai_unetzoo.data import write_drive_msd_folder
    from monai_unetzoo.transforms import EstimateFovMaskd

    drive = require_data("DRIVE")
    data = write_drive_msd_folder(drive, tmp_path / "drive_msd")
    bundle = tmp_path / "bundle"
    assert main(["plan", "--dataset", str(data), "--output", str(bundle), "--budget-minutes", "0.05"]) == 0
    meta = json.loads((bundle / "metadata.json").read_text())
    roi_rule = next(r for r in meta["plan"]["rules"] if r["name"] == "region of interest")
    threshold = roi_rule["value"]["fov_threshold"]
    assert threshold is not None and meta["fingerprint"]["roi_threshold"]["min_dice"] >= 0.99
    estimate = EstimateFovMaskd("roi", threshold=threshold)
    for item in json.loads((data / "dataset.json").read_text())["test"]:
        image = np.moveaxis(np.asarray(Image.open(data / item["image"])), -1, 0)
        mask = np.asarray(Image.open(data / item["roi"])) > 0
        fov = estimate.estimate(image)
        assert 2 * (fov & mask).sum() / (fov.sum() + mask.sum()) >= 0.99, item
    train = json.loads((bundle / "train.json").read_text())
    assert train["train"]["prepare_batch"]["_target_"].endswith("PrepareBatchWithROI")
    assert train["network_def"]["in_channels"] == 3 and train["data_check_options"]["require_roi"] is True
