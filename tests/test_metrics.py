"""ROI metrics against plain-numpy references, Mann-Whitney AUC, outside-ROI invariance and a real DRIVE image."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.metrics import ConfusionMatrixMetric, compute_hausdorff_distance, compute_roc_auc, compute_surface_dice

from monai_unetzoo.metrics import (
    ROIAUCMetric,
    ROIConfusionMetric,
    aggregate_roi_metrics,
    case_metrics_table,
    compute_pooled_roi_auc,
    compute_roi_auc,
    compute_roi_metrics,
    rank_auc,
    roi_confusion_matrix,
    write_case_table,
)

TOL = 1e-6
NAMES = ("dice", "iou", "sensitivity", "specificity", "precision", "accuracy")


# ---------------------------------------------------------------- independent numpy references
def np_confusion(p: np.ndarray, t: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, ...]:
    """p, t: (B, C, ...) 0/1; m: (B, 1, ...) 0/1 -> tp, fp, tn, fn (B, C) counted where m == 1."""
    axes = tuple(range(2, p.ndim))
    tp = ((p == 1) & (t == 1) & (m == 1)).sum(axis=axes).astype(float)
    fp = ((p == 1) & (t == 0) & (m == 1)).sum(axis=axes).astype(float)
    tn = ((p == 0) & (t == 0) & (m == 1)).sum(axis=axes).astype(float)
    fn = ((p == 0) & (t == 1) & (m == 1)).sum(axis=axes).astype(float)
    return tp, fp, tn, fn


def np_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    ok = den != 0
    out[ok] = num[ok] / den[ok]
    return out


def np_metrics(tp, fp, tn, fn) -> dict[str, np.ndarray]:
    return {
        "dice": np_ratio(2 * tp, 2 * tp + fp + fn),
        "iou": np_ratio(tp, tp + fp + fn),
        "sensitivity": np_ratio(tp, tp + fn),
        "specificity": np_ratio(tn, tn + fp),
        "precision": np_ratio(tp, tp + fp),
        "accuracy": np_ratio(tp + tn, tp + tn + fp + fn),
    }


def np_mann_whitney_auc(s: np.ndarray, y: np.ndarray) -> float:
    """AUC = P(score_pos > score_neg) + 0.5 P(equal), by all pairs."""
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / (len(pos) * len(neg)))


def _monai_unmasked(name: str, y_pred: torch.Tensor, y: torch.Tensor, include_background: bool) -> torch.Tensor:
    metric = ConfusionMatrixMetric(metric_name=name, include_background=include_background, reduction="none")
    metric(y_pred, y)
    return metric.aggregate()[0]


def _onehot(idx: torch.Tensor, c: int) -> torch.Tensor:
    return F.one_hot(idx[:, 0].long(), c).movedim(-1, 1).float()


def _random_case(seed: int, b: int = 3, c: int = 3, spatial=(13, 17)):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randint(0, c, (b, 1, *spatial), generator=g)
    lab = torch.randint(0, c, (b, 1, *spatial), generator=g)
    roi = (torch.rand((b, 1, *spatial), generator=g) > 0.4).float()
    return _onehot(pred, c), _onehot(lab, c), roi, g


# ---------------------------------------------------------------- confusion metrics
@pytest.mark.parametrize("spatial", [(13, 17), (5, 6, 7)])
@pytest.mark.parametrize("include_background", [True, False])
def test_metrics_equal_numpy_reference(spatial, include_background):
    y_pred, y, roi, _ = _random_case(0, spatial=spatial)
    y_pred[1, 2] = 0  # one class never predicted in image 1 -> precision undefined (NaN) there
    ours = compute_roi_metrics(y_pred, y, roi, include_background=include_background)
    p, t, m = y_pred.numpy(), y.numpy(), roi.numpy()
    if not include_background:
        p, t = p[:, 1:], t[:, 1:]
    ref = np_metrics(*np_confusion(p, t, m))
    assert set(ours) == set(NAMES)
    for k in NAMES:
        assert ours[k].shape == ref[k].shape
        np.testing.assert_allclose(ours[k].numpy(), ref[k], atol=TOL, rtol=0, equal_nan=True, err_msg=k)
    assert torch.isnan(ours["precision"][1, -1])


def test_binary_one_channel_and_no_roi():
    g = torch.Generator().manual_seed(1)
    y_pred = (torch.rand((2, 1, 20, 20), generator=g) > 0.5).float()
    y = (torch.rand((2, 1, 20, 20), generator=g) > 0.7).float()
    roi = (torch.rand((2, 1, 20, 20), generator=g) > 0.5).float()
    ours = compute_roi_metrics(y_pred, y, roi, include_background=False)  # ignored for C == 1
    ref = np_metrics(*np_confusion(y_pred.numpy(), y.numpy(), roi.numpy()))
    for k in NAMES:
        np.testing.assert_allclose(ours[k].numpy(), ref[k], atol=TOL, rtol=0, equal_nan=True)
    # roi=None: the whole image, equal to MONAI's unmasked ConfusionMatrixMetric
    whole = compute_roi_metrics(y_pred, y)
    for k in ("sensitivity", "specificity", "precision", "accuracy"):
        monai_v = _monai_unmasked(k, y_pred, y, include_background=True)
        np.testing.assert_allclose(whole[k].numpy(), monai_v.numpy(), atol=TOL, rtol=0, equal_nan=True)


def test_empty_class_rule_is_nan_not_zero_or_one():
    """Explicit rule: a ratio with a zero denominator is NaN; aggregates skip NaN and count the rest."""
    y = torch.zeros((2, 3, 4, 4))
    y[:, 0] = 1
    y[0, 1, :2] = 1
    y[0, 0, :2] = 0  # image 0: classes 0 and 1; class 2 absent everywhere
    y_pred = y.clone()
    y_pred[1, 0, 0, 0], y_pred[1, 1, 0, 0] = 0, 1  # image 1: one false positive of class 1
    m = compute_roi_metrics(y_pred, y)
    assert torch.isnan(m["dice"][0, 2]) and torch.isnan(m["sensitivity"][0, 2]) and torch.isnan(m["precision"][0, 2])
    assert m["dice"][1, 1] == 0.0  # class absent in the label but predicted: a real error, Dice 0
    assert torch.isnan(m["sensitivity"][1, 1])  # no positives: undefined
    metric = ROIConfusionMetric("dice", reduction="none", get_not_nans=True)
    metric(y_pred, y)
    value, not_nans = metric.aggregate()
    assert torch.isnan(value[2]) and not_nans.tolist() == [2, 2, 0]
    assert value[1] == pytest.approx(0.5)  # mean of 1.0 (image 0) and 0.0 (image 1)
    metric_mean = ROIConfusionMetric("dice", reduction="mean", get_not_nans=True)
    metric_mean(y_pred, y)
    v, n = metric_mean.aggregate()
    assert n == 2 and v == pytest.approx(float(np.mean([value[0], value[1]])))
    # an ROI without any pixel: everything undefined
    empty = compute_roi_metrics(y_pred, y, torch.zeros((2, 1, 4, 4)))
    assert all(torch.isnan(v).all() for v in empty.values())


def test_values_outside_roi_change_nothing():
    y_pred, y, roi, g = _random_case(2)
    prob = torch.rand(y_pred.shape[0], 1, *y_pred.shape[2:], generator=g)
    fg = y[:, 1:2]
    outside = roi < 0.5
    y_pred2 = torch.where(outside, _onehot(torch.randint(0, 3, roi.shape, generator=g), 3), y_pred)
    y2 = torch.where(outside, _onehot(torch.randint(0, 3, roi.shape, generator=g), 3), y)
    prob2 = torch.where(outside, torch.rand(prob.shape, generator=g), prob)
    fg2 = y2[:, 1:2]
    assert not torch.equal(y_pred, y_pred2) and not torch.equal(y, y2)
    a, b = compute_roi_metrics(y_pred, y, roi), compute_roi_metrics(y_pred2, y2, roi)
    for k in NAMES:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy())
    assert torch.equal(compute_roi_auc(prob, fg, roi), compute_roi_auc(prob2, fg2, roi))
    assert torch.equal(compute_pooled_roi_auc(prob, fg, roi), compute_pooled_roi_auc(prob2, fg2, roi))
    # without the ROI they do change
    assert not torch.equal(compute_roi_metrics(y_pred, y)["accuracy"], compute_roi_metrics(y_pred2, y2)["accuracy"])


def test_metric_inputs_are_checked():
    y_pred, y, roi, _ = _random_case(3)
    with pytest.raises(ValueError, match="binarised"):
        compute_roi_metrics(y_pred * 0.5, y, roi)
    with pytest.raises(ValueError, match="same"):
        compute_roi_metrics(y_pred[:, :2], y, roi)
    with pytest.raises(ValueError, match=r"\(B, 1, \*spatial\)"):
        compute_roi_metrics(y_pred, y, roi[:, 0])
    with pytest.raises(NotImplementedError):
        ROIConfusionMetric("not-a-metric")


# ---------------------------------------------------------------- AUC
def test_auc_equals_mann_whitney_with_ties():
    g = torch.Generator().manual_seed(4)
    prob = torch.round(torch.rand((3, 1, 15, 14), generator=g) * 20) / 20  # many ties
    y = (torch.rand((3, 1, 15, 14), generator=g) < 0.3 + 0.4 * prob).float()
    roi = (torch.rand((3, 1, 15, 14), generator=g) > 0.3).float()
    ours = compute_roi_auc(prob, y, roi)
    assert ours.shape == (3,)
    p, t, m = prob.numpy(), y.numpy(), roi.numpy() > 0.5
    for b in range(3):
        ref = np_mann_whitney_auc(p[b, 0][m[b, 0]], t[b, 0][m[b, 0]])
        assert abs(ours[b].item() - ref) < TOL
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            monai_ref = compute_roc_auc(prob[b, 0][roi[b, 0] > 0.5], y[b, 0][roi[b, 0] > 0.5].long())
        assert abs(ours[b].item() - monai_ref) < TOL
    pooled_ref = np_mann_whitney_auc(p[:, 0][m[:, 0]], t[:, 0][m[:, 0]])
    assert abs(compute_pooled_roi_auc(prob, y, roi).item() - pooled_ref) < TOL
    # softmax-style two-channel input scores channel 1 against a one-hot or index label
    two = torch.cat([1 - prob, prob], 1)
    assert torch.allclose(compute_roi_auc(two, _onehot(y, 2), roi), ours)
    assert torch.allclose(compute_roi_auc(two, y, roi), ours)
    # one class only inside the ROI -> NaN
    assert torch.isnan(rank_auc(torch.rand(10), torch.ones(10)))
    assert rank_auc(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0, 0, 1, 1])) == 1.0


def test_auc_metric_class_mean_and_global():
    g = torch.Generator().manual_seed(5)
    prob = torch.rand((4, 1, 12, 12), generator=g)
    y = (torch.rand((4, 1, 12, 12), generator=g) < prob).float()
    roi = (torch.rand((4, 1, 12, 12), generator=g) > 0.3).float()
    inside = roi > 0.5
    per_image = [np_mann_whitney_auc(prob[b, 0][inside[b, 0]].numpy(), y[b, 0][inside[b, 0]].numpy()) for b in range(4)]
    m_mean, m_glob = ROIAUCMetric("mean"), ROIAUCMetric("global")
    for metric in (m_mean, m_glob):
        metric(prob[:2], y[:2], roi=roi[:2])  # batch-first
        metric(list(prob[2:]), list(y[2:]), roi=list(roi[2:]))  # lists of channel-first items
    assert abs(m_mean.aggregate().item() - np.mean(per_image)) < TOL
    np.testing.assert_allclose(m_mean.per_case().numpy()[:, 0], per_image, atol=TOL)
    pooled = np_mann_whitney_auc(prob[roi > 0.5].numpy(), y[roi > 0.5].numpy())
    assert abs(m_glob.aggregate().item() - pooled) < TOL
    m_glob.reset()
    with pytest.raises(ValueError, match="no data"):
        m_glob.aggregate()


# ---------------------------------------------------------------- cumulative metric and aggregation
@pytest.mark.parametrize("name", NAMES)
def test_confusion_metric_class_mean_and_global(name):
    y_pred, y, roi, _ = _random_case(6, b=4)
    p, t, m = y_pred.numpy()[:, 1:], y.numpy()[:, 1:], roi.numpy()
    tp, fp, tn, fn = np_confusion(p, t, m)
    per_image = np_metrics(tp, fp, tn, fn)[name]
    glob = np_metrics(tp.sum(0), fp.sum(0), tn.sum(0), fn.sum(0))[name]
    for aggregation, ref in (("mean", np.nanmean(per_image, axis=0)), ("global", glob)):
        metric = ROIConfusionMetric(name, include_background=False, aggregation=aggregation, reduction="none")
        metric(y_pred[:2], y[:2], roi=roi[:2])
        metric(list(y_pred[2:]), list(y[2:]), roi=list(roi[2:]))
        np.testing.assert_allclose(metric.aggregate().numpy(), ref, atol=TOL, equal_nan=True)
        np.testing.assert_allclose(metric.per_case().numpy(), per_image, atol=TOL, equal_nan=True)
        macro = ROIConfusionMetric(name, include_background=False, aggregation=aggregation)
        macro(y_pred, y, roi=roi)
        assert abs(macro.aggregate().item() - np.nanmean(ref)) < TOL
    cm = roi_confusion_matrix(y_pred, y, roi, include_background=False)
    np.testing.assert_allclose(aggregate_roi_metrics(cm, "global")[name].numpy(), glob, atol=TOL, equal_nan=True)


# ---------------------------------------------------------------- per-case table with MONAI's HD95 / surface Dice
def test_case_table_with_hd95_and_surface_dice(tmp_path):
    g = torch.Generator().manual_seed(7)
    lab = torch.zeros((2, 1, 12, 12, 10), dtype=torch.long)
    lab[:, :, 3:9, 3:9, 2:8] = 1
    lab[:, :, 5:7, 5:7, 4:6] = 2
    pred = lab.clone()
    pred[0, :, 3:5, 3:9, 2:8] = 0
    pred[1] = torch.roll(lab[1], 1, dims=1)
    roi = torch.ones((2, 1, 12, 12, 10))
    roi[:, :, :2] = 0
    y_pred, y = _onehot(pred, 3), _onehot(lab, 3)
    prob = torch.softmax(y_pred * 2 + torch.rand(y_pred.shape, generator=g), 1)  # class 1 is scored by default
    table = case_metrics_table(
        y_pred, y, roi, y_prob=prob, include_background=False, hd95=True, surface_dice_thresholds=[1.0, 1.0],
        spacing=(1.0, 1.0, 2.0),
    )
    ref_hd = compute_hausdorff_distance(
        y_pred * roi, y * roi, include_background=False, percentile=95, spacing=(1.0, 1.0, 2.0)
    )
    ref_sd = compute_surface_dice(y_pred * roi, y * roi, [1.0, 1.0], include_background=False, spacing=(1.0, 1.0, 2.0))
    np.testing.assert_allclose(table["hd95"].numpy(), ref_hd.numpy(), atol=TOL)
    np.testing.assert_allclose(table["surface_dice"].numpy(), ref_sd.numpy(), atol=TOL)
    assert table["hd95"][1].max() > 0 and table["surface_dice"][0].min() < 1  # the errors are seen
    out = write_case_table(table, tmp_path / "cases.csv", case_names=["a", "b"], class_labels=["c1", "c2"])
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["a", "b"]
    assert float(rows[1]["hd95_c2"]) == pytest.approx(table["hd95"][1, 1].item())
    assert float(rows[0]["dice_mean"]) == pytest.approx(np.nanmean(table["dice"][0].numpy()))
    assert float(rows[0]["auc"]) == pytest.approx(table["auc"][0, 0].item())
    sel = roi[0, 0] > 0.5
    ref_auc = np_mann_whitney_auc(prob[0, 1][sel].numpy(), y[0, 1][sel].numpy())
    assert table["auc"][0, 0].item() == pytest.approx(ref_auc)
    with pytest.raises(ValueError, match="class labels"):
        write_case_table(table, tmp_path / "x.csv", class_labels=["only-one"])


# ---------------------------------------------------------------- real DRIVE image with its FOV mask
@pytest.mark.real_data
def test_drive_fov_masked_accuracy_and_specificity_differ_from_monai(drive_dir):
    from PIL import Image

    label = np.array(Image.open(drive_dir / "training" / "1st_manual" / "21_manual1.gif")) > 0
    fov = np.array(Image.open(drive_dir / "training" / "mask" / "21_training_mask.gif")) > 0
    assert label.shape == fov.shape == (584, 565)
    # fixed perturbation of the label: shift by 2 pixels (misses and false alarms along every vessel) and drop a block
    pred = np.roll(label, 2, axis=1)
    pred[250:330, 250:330] = False
    to_t = lambda a: torch.from_numpy(a.astype(np.float32))[None, None]  # noqa: E731
    y_pred = torch.cat([1 - to_t(pred), to_t(pred)], 1)
    y = torch.cat([1 - to_t(label), to_t(label)], 1)
    roi = to_t(fov)

    ours = compute_roi_metrics(y_pred, y, roi, include_background=False)
    ref = np_metrics(*np_confusion(y_pred.numpy()[:, 1:], y.numpy()[:, 1:], roi.numpy()))
    for k in NAMES:
        np.testing.assert_allclose(ours[k].numpy(), ref[k], atol=TOL, rtol=0)

    unmasked = {
        k: _monai_unmasked(k, y_pred, y, include_background=False).item()
        for k in ("accuracy", "specificity", "sensitivity")
    }
    n_out = int((~fov).sum())
    assert 0.25 < n_out / fov.size < 0.4  # about a third of the image lies outside the FOV
    # outside the FOV everything is a "true negative" for MONAI: accuracy and specificity are inflated
    assert unmasked["accuracy"] > ours["accuracy"].item() + 0.005
    assert unmasked["specificity"] > ours["specificity"].item() + 0.001
    # MONAI's numbers are the numpy reference over the whole image (roi = all ones)
    whole = np_metrics(*np_confusion(y_pred.numpy()[:, 1:], y.numpy()[:, 1:], np.ones_like(roi.numpy())))
    for k, v in unmasked.items():
        assert abs(v - whole[k].item()) < TOL

    # AUC inside the FOV of a probability made from the perturbed prediction
    g = torch.Generator().manual_seed(0)
    prob = 0.7 * to_t(pred) + 0.3 * torch.rand(roi.shape, generator=g)
    auc = compute_roi_auc(prob, to_t(label), roi).item()
    sel = fov.reshape(-1)
    # reference: scipy's Mann-Whitney U on all FOV pixels (the pairwise numpy version would need 10^10 pairs)
    from scipy.stats import mannwhitneyu

    s, t = prob.numpy().reshape(-1)[sel], label.reshape(-1)[sel]
    u = mannwhitneyu(s[t], s[~t], alternative="two-sided").statistic
    assert abs(auc - u / (t.sum() * (~t).sum())) < TOL
    assert 0.5 < auc < 1.0
    assert abs(auc - compute_roi_auc(prob, to_t(label)).item()) > 1e-4  # the FOV changes the AUC
