"""The ROI reaches the loss inside SupervisedTrainer and the metrics inside SupervisedEvaluator (bundle-config style).

Both engines are built from a dict config with ``monai.bundle.ConfigParser`` (the pattern our bundles use) and run
on tiny synthetic 2D data; the values the engines report are checked against direct computations.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from monai_unetzoo.engines import PrepareBatchWithROI
from monai_unetzoo.losses import MaskedDeepSupervisionLoss, MaskedDiceCELoss

IMPORTS = ["$import torch", "$import monai", "$import monai_unetzoo", "$import monai_unetzoo.losses",
           "$import monai_unetzoo.engines", "$import monai_unetzoo.metrics"]


def _make_data(n: int = 4, size: int = 32, seed: int = 0) -> list[dict]:
    """Disks on noise; the ROI is a centred circle (like a fundus FOV) that cuts some disks."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    fov = (((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.42 * size) ** 2).float()[None]
    data = []
    for i in range(n):
        cy, cx = 8 + 4 * i, 9 + 3 * i
        lab = (((yy - cy) ** 2 + (xx - cx) ** 2) < 30).float()[None]
        lab[:, :3, :] = 1  # a labelled band outside the FOV that must not count
        img = lab + 0.6 * torch.randn((1, size, size), generator=g)
        meta = {"filename_or_obj": f"case{i}.png"}
        data.append({"image": MetaTensor(img, meta=meta), "label": lab, "roi": fov.clone()})
    return data


def test_prepare_batch_writes_ignore_value_outside_roi():
    data = _make_data(2)
    batch = {k: torch.stack([d[k] for d in data]) for k in ("image", "label", "roi")}
    image, label = PrepareBatchWithROI(roi_key="roi", ignore_index=255)(batch, device="cpu")
    assert torch.equal(image, batch["image"])
    inside = batch["roi"] > 0.5
    assert torch.equal(label[inside], batch["label"][inside])
    assert torch.all(label[~inside] == 255)
    # one-hot labels: every channel gets the sentinel, and MaskedDiceCELoss(ignore_index) equals the mask version
    onehot = torch.cat([1 - batch["label"], batch["label"]], 1)
    _, lab_oh = PrepareBatchWithROI()({**batch, "label": onehot})
    assert torch.all(lab_oh[(~inside).expand_as(lab_oh)] == 255)
    logits = torch.randn(onehot.shape, generator=torch.Generator().manual_seed(0))
    kw = dict(softmax=True, include_background=False)
    assert torch.allclose(
        MaskedDiceCELoss(ignore_index=255, **kw)(logits, lab_oh),
        MaskedDiceCELoss(**kw)(logits, onehot, mask=batch["roi"]),
    )
    # integer labels are widened so that any ignore value fits
    _, lab_u8 = PrepareBatchWithROI(ignore_index=-1)({**batch, "label": batch["label"].to(torch.uint8)})
    assert lab_u8.dtype == torch.int64 and torch.all(lab_u8[~inside] == -1)
    with pytest.raises(KeyError, match="'roi'"):
        PrepareBatchWithROI()({"image": batch["image"], "label": batch["label"]})
    with pytest.raises(ValueError, match=r"\(B, 1, \*spatial\)"):
        PrepareBatchWithROI()({**batch, "roi": batch["roi"][..., :-1]})


def _stack(items: list, key: str) -> torch.Tensor:
    return torch.stack([torch.as_tensor(it[key]) for it in items])


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_trainer_from_config_scores_only_the_roi(deep_supervision):
    torch.manual_seed(0)
    base_loss = {"_target_": "MaskedDiceCELoss", "to_onehot_y": True, "softmax": True, "ignore_index": 255}
    config = {
        "imports": IMPORTS,
        "device": "$torch.device('cpu')",
        "network_def": {
            "_target_": "monai_unetzoo.networks.get_network",
            "name": "unetpp" if deep_supervision else "unet",
            "spatial_dims": 2,
            "in_channels": 1,
            "out_channels": 2,
            "features": [4, 8, 16],
            **({"deep_supervision": True} if deep_supervision else {}),
        },
        "network": "$@network_def.to(@device)",
        # --- the pattern: the ROI travels in the label as ignore_index, the loss masks the same value ---
        "prepare_batch": {"_target_": "PrepareBatchWithROI", "roi_key": "roi", "ignore_index": 255},
        "loss": {"_target_": "MaskedDeepSupervisionLoss", "loss": base_loss} if deep_supervision else base_loss,
        "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": 0.01},
        "train_data": [],
        "train_loader": {"_target_": "DataLoader", "dataset": "@train_data", "batch_size": 2, "shuffle": False},
        "trainer": {
            "_target_": "SupervisedTrainer",
            "device": "@device",
            "max_epochs": 2,
            "train_data_loader": "@train_loader",
            "network": "@network",
            "optimizer": "@optimizer",
            "loss_function": "@loss",
            "prepare_batch": "@prepare_batch",
        },
    }
    parser = ConfigParser(config)
    parser["train_data"] = _make_data(4)
    trainer = parser.get_parsed_content("trainer")
    network = parser.get_parsed_content("network")
    before = [p.detach().clone() for p in network.parameters()]

    plain = MaskedDiceCELoss(to_onehot_y=True, softmax=True)
    direct = MaskedDeepSupervisionLoss(plain) if deep_supervision else plain
    records: list[tuple[float, float, float]] = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def _check(engine):  # output and batch are decollated lists of per-item dicts here
        out, batch = engine.state.output, engine.state.batch
        if deep_supervision:
            pred = [torch.stack([o["pred"][k] for o in out]) for k in range(len(out[0]["pred"]))]
        else:
            pred = _stack(out, "pred")
        label, roi = _stack(batch, "label"), _stack(batch, "roi")  # the original label, without 255
        seen = float(out[0]["loss"])
        with torch.no_grad():
            records.append((seen, float(direct(pred, label, mask=roi)), float(direct(pred, label))))

    trainer.run()
    assert len(records) == 4  # 2 epochs x 2 iterations
    for seen, with_mask, whole_image in records:
        assert np.isfinite(seen)
        assert abs(seen - with_mask) < 1e-5  # the trainer's loss is the loss computed directly with the ROI mask
        assert abs(seen - whole_image) > 1e-3  # ... and not the whole-image loss
    assert records[-1][0] < records[0][0]
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, network.parameters()))


def test_evaluator_from_config_with_roi_metrics_and_case_table(tmp_path):
    torch.manual_seed(0)
    from_engine = "$monai.handlers.from_engine"
    config = {
        "imports": IMPORTS,
        "device": "$torch.device('cpu')",
        # a fixed 1x1 "network" (foreground logit = x - 0.5, background = 0.5 - x) gives non-trivial, noisy masks
        "network": {"_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": 1},
        "val_data": [],
        "val_loader": {"_target_": "DataLoader", "dataset": "@val_data", "batch_size": 2, "shuffle": False},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "CopyItemsd", "keys": "pred", "names": "prob"},  # new key -> goes to the output
                {"_target_": "CopyItemsd", "keys": "roi", "names": "pred_roi"},  # ROI copied into the output
                {"_target_": "AsDiscreted", "keys": ["pred", "label"], "argmax": [True, False], "to_onehot": 2},
            ],
        },
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@val_loader",
            "network": "@network",
            "postprocessing": "@postprocessing",
            "key_val_metric": {
                "val_dice": {"_target_": "ROIConfusionHandler", "metric_name": "dice", "include_background": False,
                             "output_transform": f"{from_engine}(['pred', 'label'])"}
            },
            "additional_metrics": {
                # ROI read from engine.state.batch["roi"]
                "val_acc": {"_target_": "ROIConfusionHandler", "metric_name": "accuracy", "include_background": False},
                "val_spec": {"_target_": "ROIConfusionHandler", "metric_name": "specificity",
                             "include_background": False},
                # ROI given as the third item of output_transform
                "val_spec_out": {"_target_": "ROIConfusionHandler", "metric_name": "specificity",
                                 "include_background": False,
                                 "output_transform": f"{from_engine}(['pred', 'label', 'pred_roi'])"},
                "val_sens_global": {"_target_": "ROIConfusionHandler", "metric_name": "sensitivity",
                                    "include_background": False, "aggregation": "global"},
                "val_auc": {"_target_": "ROIAUCHandler", "output_transform": f"{from_engine}(['prob', 'label'])"},
                "val_auc_global": {"_target_": "ROIAUCHandler", "aggregation": "global",
                                   "output_transform": f"{from_engine}(['prob', 'label'])"},
                # MONAI's unmasked numbers, for comparison and the per-case table
                "val_acc_monai": {"_target_": "ConfusionMatrix", "metric_name": "accuracy",
                                  "include_background": False,
                                  "output_transform": f"{from_engine}(['pred', 'label'])"},
                "val_hd95": {"_target_": "HausdorffDistance", "percentile": 95, "include_background": False,
                             "output_transform": f"{from_engine}(['pred', 'label'])"},
            },
            "val_handlers": [
                {"_target_": "ROICaseTableSaver", "save_dir": str(tmp_path),
                 "metric_details": ["val_dice", "val_acc", "val_auc", "val_hd95"],
                 "batch_transform": "$lambda x: [xx['image'].meta for xx in x]"},
                {"_target_": "MetricsSaver", "save_dir": str(tmp_path), "metrics": "*", "metric_details": ["val_acc"],
                 "batch_transform": "$lambda x: [xx['image'].meta for xx in x]"},
            ],
        },
    }
    parser = ConfigParser(config)
    data = _make_data(4, seed=1)
    parser["val_data"] = data
    evaluator = parser.get_parsed_content("evaluator")
    with torch.no_grad():
        conv = parser.get_parsed_content("network")
        conv.weight.copy_(torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.5, -0.5]))
    captured: list[dict] = []

    @evaluator.on(Events.ITERATION_COMPLETED)
    def _capture(engine):
        for b, o in zip(engine.state.batch, engine.state.output):
            captured.append({"pred": o["pred"], "label": o["label"], "prob": o["prob"], "roi": b["roi"]})

    evaluator.run()
    m = evaluator.state.metrics
    assert len(captured) == 4
    assert 0.3 < m["val_dice"] < 0.99 and 0.6 < m["val_auc"] < 0.999  # a real, imperfect segmentation

    # independent numpy reference on the captured post-processed outputs (foreground class only)
    p = np.stack([c["pred"][1].numpy() for c in captured]) > 0.5
    t = np.stack([c["label"][1].numpy() for c in captured]) > 0.5
    r = np.stack([c["roi"][0].numpy() for c in captured]) > 0.5
    prob = np.stack([c["prob"][1].numpy() for c in captured])
    ax = (1, 2)
    tp, fp = (p & t & r).sum(ax), (p & ~t & r).sum(ax)
    tn, fn = (~p & ~t & r).sum(ax), (~p & t & r).sum(ax)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = 2 * tp / (2 * tp + fp + fn)
        acc = (tp + tn) / (tp + tn + fp + fn)
        spec = tn / (tn + fp)
    assert m["val_dice"] == pytest.approx(np.nanmean(dice), abs=1e-6)
    assert m["val_acc"] == pytest.approx(np.nanmean(acc), abs=1e-6)
    assert m["val_spec"] == pytest.approx(np.nanmean(spec), abs=1e-6)
    assert m["val_spec_out"] == pytest.approx(m["val_spec"], abs=1e-12)
    assert m["val_sens_global"] == pytest.approx(tp.sum() / (tp.sum() + fn.sum()), abs=1e-6)

    def mw(s, y):
        pos, neg = s[y], s[~y]
        d = pos[:, None] - neg[None, :]
        return ((d > 0).sum() + 0.5 * (d == 0).sum()) / (len(pos) * len(neg))

    aucs = [mw(prob[i][r[i]], t[i][r[i]]) for i in range(4)]
    assert m["val_auc"] == pytest.approx(np.mean(aucs), abs=1e-6)
    assert m["val_auc_global"] == pytest.approx(mw(prob[r], t[r]), abs=1e-6)
    # MONAI's whole-image accuracy counts the outside as well (our band of labels outside the FOV is missed there)
    acc_whole = ((p == t).sum(ax) / p[0].size).mean()
    assert m["val_acc_monai"] == pytest.approx(acc_whole, abs=1e-6)
    assert abs(m["val_acc_monai"] - m["val_acc"]) > 1e-3

    # one per-case table with our metrics and MONAI's HD95 side by side
    with open(tmp_path / "case_metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["case"] for row in rows] == [f"case{i}.png" for i in range(4)]
    assert set(rows[0]) == {"case", "val_dice", "val_acc", "val_auc", "val_hd95"}
    for i, row in enumerate(rows):
        assert float(row["val_dice"]) == pytest.approx(dice[i], abs=1e-6, nan_ok=True)
        assert float(row["val_acc"]) == pytest.approx(acc[i], abs=1e-6)
        assert float(row["val_auc"]) == pytest.approx(aucs[i], abs=1e-6)
    hd = evaluator.state.metric_details["val_hd95"]
    assert [float(row["val_hd95"]) for row in rows] == pytest.approx(hd[:, 0].tolist(), nan_ok=True)
    # MONAI's MetricsSaver writes the per-case values of our handlers too (not the raw confusion buffer)
    with open(tmp_path / "val_acc_raw.csv") as f:
        raw = list(csv.reader(f))
    assert raw[0] == ["filename", "class0", "mean"]
    assert [float(x[1]) for x in raw[1:]] == pytest.approx(acc.tolist(), abs=1e-4)
