"""The bundles' JSON as thin wiring: the functions their ``$`` expressions call, and the values both train.json share.

References are written out independently here (numpy means, hand-built datalists, the JSON files themselves).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from monai_unetzoo.summaries import drive_evaluation_summary, msd_evaluation_summary, write_summary_json
from monai_unetzoo.validation import bundle_data_check, switch_enabled

REPO = Path(__file__).resolve().parents[1]
TRAIN = {name: REPO / "bundles" / name / "train.json" for name in ("drive", "hippocampus")}

#: Top-level values both train.json hold with the same content: the shared recipe skeleton (paths, switches, split
#: and device handling, optimiser, resume state, logging). A change to one of them must be made in both bundles.
#: The issue counted 24; ``data_check`` joined them when its logic moved into ``bundle_data_check``, ``fold`` and
#: ``num_folds`` with cross-validation.
SHARED_TOP_LEVEL = (
    "output_dir", "resume", "validate_data", "dataset_dir", "is_synthetic", "val_fraction", "split_seed",
    "train_split", "train_datalist", "val_datalist", "device", "torch_device", "seed", "num_threads",
    "learning_rate", "amp", "autocast", "network", "optimizer", "resume_state", "log_file", "log_file_handler",
    "run", "training", "data_check", "fold", "num_folds",
)


def test_the_shared_top_level_values_stay_equal():
    drive, hippo = (json.loads(TRAIN[n].read_text()) for n in ("drive", "hippocampus"))
    assert len(SHARED_TOP_LEVEL) == 27
    differ = [k for k in SHARED_TOP_LEVEL if drive.get(k, "<missing>") != hippo.get(k, "<missing>")]
    assert not differ, {k: (drive.get(k), hippo.get(k)) for k in differ}
    # and nothing else became equal by accident without being listed (the list is the contract)
    equal = {k for k in drive if k in hippo and drive[k] == hippo[k]}
    assert equal == set(SHARED_TOP_LEVEL), sorted(equal ^ set(SHARED_TOP_LEVEL))


@pytest.mark.parametrize("name", ["drive", "hippocampus"])
def test_no_long_logic_left_in_the_bundle_expressions(name):
    """The expressions that held logic (summaries of 440-545 characters, the data check's own true/false parsing)
    are gone; what is left is wiring: no expression in train.json / evaluate.json longer than 250 characters (the longest left builds a transform)."""
    folder = REPO / "bundles" / name

    def expressions(node):
        if isinstance(node, dict):
            for value in node.values():
                yield from expressions(value)
        elif isinstance(node, list):
            for value in node:
                yield from expressions(value)
        elif isinstance(node, str) and node.startswith("$"):
            yield node

    for config in ("train.json", "evaluate.json"):
        found = list(expressions(json.loads((folder / config).read_text())))
        assert found and max(map(len, found)) <= 250, max(found, key=len)
        assert not any("'false', '0', 'no', 'off'" in e for e in found)


# ------------------------------------------------------------------------------------------ the data check


@pytest.mark.parametrize("value, expected", [
    (False, False), ("false", False), (" False ", False), ("0", False), (0, False), ("no", False), ("OFF", False),
    (True, True), ("true", True), ("yes", True), (1, True), ("1", True), ("on", True),
])
def test_switch_enabled_reads_fire_strings(value, expected):
    assert switch_enabled(value) is expected


def test_bundle_data_check_checks_the_named_splits_in_order(tmp_path):
    """Off: nothing is read (the paths do not even exist). On: exactly the cases of the named splits are loaded,
    in order, and a bad one stops the run with status 2 (every problem printed)."""
    import nibabel as nib

    def volume(path, data):
        nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.eye(4)), str(path))
        return str(path)

    rng = np.random.default_rng(0)
    cases = {}
    for cid in ("a", "b", "c"):
        label = np.zeros((6, 6, 6), np.uint8)
        label[2:4, 2:4, 2:4] = 1
        cases[cid] = {"image": volume(tmp_path / f"{cid}.nii.gz", rng.random((6, 6, 6))),
                      "label": volume(tmp_path / f"{cid}_seg.nii.gz", label), "case_id": cid}
    lists = {"training": [cases["b"], cases["a"]], "validation": [cases["c"]],
             "test": [{"image": str(tmp_path / "missing.nii.gz")}]}
    options = {"num_classes": 2, "in_channels": 1, "spatial_dims": 3}

    assert bundle_data_check("false", {"training": [{"image": "/nonexistent"}]}, ["training"]) is None
    checked = bundle_data_check(True, lists, ["training", "validation"], **options)
    assert [c["case_id"] for c in checked] == ["b", "a", "c"]
    with pytest.raises(SystemExit) as stop:
        bundle_data_check("true", lists, ["validation", "test"], **options)
    assert stop.value.code == 2


# ---------------------------------------------------------------------------------------------- summaries


def _state(metrics, details):
    return SimpleNamespace(metrics=metrics, metric_details=details)


def test_drive_summary(tmp_path):
    datalist = [{"case_id": "21", "image": "x"}, {"case_id": "22", "image": "y"}]
    state = _state({"dice": 0.75, "auc": torch.tensor(0.9)},
                   {"dice": torch.tensor([[0.7], [0.8]]), "auc": torch.tensor([[0.88], [0.92]])})
    summary = drive_evaluation_summary("validation", "models/model.pt", "/data/DRIVE", datalist, state)
    assert list(summary) == ["split", "checkpoint", "data_root", "num_images", "cases", "mean", "per_image"]
    assert summary["checkpoint"] == str(Path("models/model.pt").resolve()) and summary["num_images"] == 2
    assert summary["cases"] == ["21", "22"] and summary["mean"] == {"dice": 0.75, "auc": pytest.approx(0.9)}
    assert summary["per_image"]["dice"] == pytest.approx([0.7, 0.8])
    path = write_summary_json(tmp_path / "metrics_validation.json", summary)
    assert json.loads(Path(path).read_text()) == json.loads(json.dumps(summary))


def test_msd_summary_means_per_class_ignoring_nan():
    """(N cases, C classes) details -> per-class means over the cases, NaN (class absent) ignored; numpy reference."""
    dice = np.array([[0.9, 0.8], [0.7, np.nan], [0.8, 0.6]])
    hd95 = np.array([[1.0, 2.0], [3.0, 4.0], [np.nan, np.nan]])
    datalist = [{"case_id": c} for c in ("h1", "h2", "h3")]
    state = _state({"dice": 0.76}, {"dice": torch.as_tensor(dice), "hd95": torch.as_tensor(hd95)[:, None, :]})
    summary = msd_evaluation_summary("validation", "/m.pt", "/data/T4", datalist, ["Anterior", "Posterior"], state)
    assert list(summary) == ["split", "checkpoint", "data_root", "num_cases", "cases", "class_names",
                             "per_class_mean", "mean"]
    assert summary["per_class_mean"]["dice"] == pytest.approx([0.8, 0.7])  # (0.9+0.7+0.8)/3, (0.8+0.6)/2
    assert summary["per_class_mean"]["hd95"] == pytest.approx([2.0, 3.0])
    assert summary["mean"] == {"dice": 0.76} and summary["class_names"] == ["Anterior", "Posterior"]
    all_nan = msd_evaluation_summary("v", "/m.pt", "/d", datalist[:1], ["A"], _state({}, {"d": torch.tensor([[math.nan]])}))
    assert math.isnan(all_nan["per_class_mean"]["d"][0])
