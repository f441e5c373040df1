"""Cross-validation folds of both bundles and ensembles of checkpoints in ``unetzoo predict`` (issue 18).

Folds are checked on the real case lists (208 Task04 cases, 20 DRIVE training images): disjoint, covering every
case once, reproducible, and fold 0 of 5 equal to each bundle's fixed split. Ensembles run through the real
command on a real hippocampus volume: two identical checkpoints give the single model's files exactly; two
different ones give the mean of their probabilities (each computed by a single-model run).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_unetzoo.data.drive import drive_datalists, split_drive_cases
from monai_unetzoo.data.folds import fold_indices
from monai_unetzoo.data.msd import build_msd_datalist, split_msd_cases

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "hippocampus"
UNETZOO = shutil.which("unetzoo", path=str(Path(sys.executable).parent)) or "unetzoo"
ENV = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")


def _check_folds(items, split, num_folds=5):
    ids = [d["case_id"] for d in items]
    vals = []
    for k in range(num_folds):
        train, val = split(items, fold=k, num_folds=num_folds)
        t, v = {d["case_id"] for d in train}, {d["case_id"] for d in val}
        assert not t & v and t | v == set(ids)
        assert split(items, fold=k, num_folds=num_folds) == (train, val)  # reproducible
        vals.append(v)
    assert sum(len(v) for v in vals) == len(ids) and set().union(*vals) == set(ids)  # every case validated once
    sizes = sorted(len(v) for v in vals)
    assert sizes[-1] - sizes[0] <= 1
    _, default_val = split(items)
    assert {d["case_id"] for d in default_val} == vals[0]  # fold 0 of 5 is the bundle's fixed split
    return vals


@pytest.mark.real_data
def test_hippocampus_folds_on_the_real_case_list(hippocampus_dir):
    items = build_msd_datalist(hippocampus_dir, "training", validate=False)
    assert len(items) == 208
    vals = _check_folds(items, split_msd_cases)
    assert [len(v) for v in vals] == [42, 42, 42, 41, 41]


@pytest.mark.real_data
def test_drive_folds_on_the_real_training_images(drive_dir):
    items = drive_datalists(drive_dir, validate=False)["all_training"]
    assert len(items) == 20
    vals = _check_folds(items, split_drive_cases)
    assert [len(v) for v in vals] == [4] * 5


def test_fold_indices_rejects_bad_requests():
    assert fold_indices([2, 0, 1, 3], 2) == [[2, 0], [1, 3]]
    with pytest.raises(ValueError):
        fold_indices([0, 1, 2], 4)
    with pytest.raises(ValueError):
        fold_indices([0, 0, 1], 2)


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["drive", "hippocampus"])
def test_bundle_fold_options_pick_the_fold_and_its_own_folder(name, tmp_path, hippocampus_dir, drive_dir):
    from monai.bundle import ConfigParser

    data = hippocampus_dir if name == "hippocampus" else drive_dir
    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / name / "train.json"))
    parser.update({"bundle_root": str(tmp_path), "dataset_dir": str(data), "fold": 3})
    parser.get_parsed_content("imports")
    assert parser.get_parsed_content("output_dir") == str(tmp_path) + "/models/fold3"
    val = parser.get_parsed_content("val_datalist")
    items = parser.get_parsed_content("datalists")["all_training"]
    split = split_msd_cases if name == "hippocampus" else split_drive_cases
    assert [d["case_id"] for d in val] == [d["case_id"] for d in split(items, fold=3)[1]]


def _checkpoint(path: Path, seed: int) -> Path:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "train.json"))
    parser["bundle_root"] = str(BUNDLE)
    parser.get_parsed_content("imports")
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)
    return path


def _predict(src: Path, out: Path, *checkpoints: Path) -> Path:
    proc = subprocess.run([UNETZOO, "predict", "--bundle", str(BUNDLE), "--checkpoint", *map(str, checkpoints),
                           "--input", str(src), "--output", str(out), "--save-probabilities", "--precision", "fp32",
                           "--quiet"], capture_output=True, encoding="utf-8", errors="replace", env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.real_data
def test_ensembles_average_probabilities(hippocampus_dir, tmp_path):
    src = sorted((hippocampus_dir / "imagesTr").glob("hippocampus_*.nii.gz"))[0]
    stem = src.name.replace(".nii.gz", "")
    a, b = _checkpoint(tmp_path / "folds" / "fold0" / "model.pt", 0), _checkpoint(tmp_path / "folds" / "fold1" / "model.pt", 1)

    def files(out: Path) -> tuple[np.ndarray, np.ndarray, bytes]:
        prob = np.asarray(nib.load(out / f"{stem}_prob.nii.gz").dataobj)
        seg_path = out / f"{stem}_seg.nii.gz"
        return prob, np.asarray(nib.load(seg_path).dataobj), seg_path.read_bytes()

    pa, sa, ba = files(_predict(src, tmp_path / "a", a))
    pb, _, _ = files(_predict(src, tmp_path / "b", b))
    paa, saa, baa = files(_predict(src, tmp_path / "aa", a, a))
    np.testing.assert_array_equal(paa, pa)  # identical members: exactly the single model
    assert baa == ba
    assert not np.allclose(pa, pb, atol=1e-3)  # the two checkpoints really differ
    pab, sab, _ = files(_predict(src, tmp_path / "ab", tmp_path / "folds"))  # a folder of fold checkpoints
    np.testing.assert_allclose(pab, (pa + pb) / 2, atol=1e-6)
    np.testing.assert_array_equal(sab, np.argmax(pab, axis=-1))
    members = json.loads((tmp_path / "ab" / "provenance.json").read_text())["checkpoint"]["members"]
    assert [m["path"] for m in members] == [str(a.resolve()), str(b.resolve())]
    import hashlib

    assert [m["sha256"] for m in members] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b)]
