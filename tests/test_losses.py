"""MaskedDiceCELoss and MaskedDeepSupervisionLoss against independent references.

References: MONAI's own ``DiceCELoss`` (all-ones mask must agree), MONAI's ``DiceCELoss`` on the ROI pixels gathered
into a 1-D "image" (single image: masking must equal cropping), and a plain numpy computation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from monai_unetzoo.losses import MaskedDeepSupervisionLoss, MaskedDiceCELoss, deep_supervision_weights

TOL = 1e-6


def _gen(seed: int, b: int = 2, c: int = 3, spatial=(9, 11)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn((b, c, *spatial), generator=g) * 2
    idx = torch.randint(0, c, (b, 1, *spatial), generator=g)
    roi = (torch.rand((b, 1, *spatial), generator=g) > 0.35).float()
    return logits, idx, roi, g


# (kwargs shared by MONAI and ours, number of channels, target kind, spatial size)
CASES = [
    (dict(softmax=True, to_onehot_y=True), 3, "index", (9, 11)),
    (dict(softmax=True), 3, "onehot", (9, 11)),
    (dict(softmax=True, to_onehot_y=True, include_background=False), 3, "index", (9, 11)),
    (dict(softmax=True, to_onehot_y=True, batch=True), 3, "index", (9, 11)),
    (dict(softmax=True, to_onehot_y=True, weight=torch.tensor([0.2, 1.0, 3.0])), 3, "index", (9, 11)),
    (
        dict(softmax=True, to_onehot_y=True, include_background=False, weight=torch.tensor([0.2, 1.0, 3.0])),
        3,
        "index",
        (9, 11),
    ),
    (dict(softmax=True, weight=torch.tensor([0.5, 1.5, 2.0])), 3, "onehot", (9, 11)),
    (dict(softmax=True, to_onehot_y=True, smooth_nr=0.0, smooth_dr=1e-3), 3, "index", (9, 11)),
    (dict(softmax=True, to_onehot_y=True, lambda_dice=0.3, lambda_ce=1.7), 3, "index", (9, 11)),
    (dict(softmax=True, to_onehot_y=True, jaccard=True, squared_pred=True), 3, "index", (9, 11)),
    (
        dict(softmax=True, to_onehot_y=True, label_smoothing=0.1, weight=torch.tensor([1.0, 2.0, 0.5])),
        3,
        "index",
        (9, 11),
    ),
    (dict(softmax=True, to_onehot_y=True, reduction="sum", batch=True), 3, "index", (9, 11)),
    (dict(sigmoid=True), 1, "binary", (9, 11)),
    (dict(sigmoid=True, batch=True, weight=torch.tensor([2.5])), 1, "binary", (9, 11)),
    (dict(sigmoid=True, smooth_nr=1e-4, smooth_dr=1e-4, lambda_dice=2.0, lambda_ce=0.5), 1, "binary", (9, 11)),
    (dict(sigmoid=True), 2, "onehot", (9, 11)),  # MONAI: multi-channel sigmoid Dice + softmax-CE on probabilities
    (dict(softmax=True, to_onehot_y=True, include_background=False, batch=True), 3, "index", (5, 6, 7)),
    (dict(sigmoid=True), 1, "binary", (5, 6, 7)),
]


def _target(idx: torch.Tensor, c: int, kind: str) -> torch.Tensor:
    if kind == "index":
        return idx.float()
    if kind == "binary":
        return (idx > 0).float()
    return F.one_hot(idx[:, 0], c).movedim(-1, 1).float()


@pytest.mark.parametrize("kwargs,c,kind,spatial", CASES)
def test_all_ones_mask_equals_monai_dicece(kwargs, c, kind, spatial):
    logits, idx, _, _ = _gen(1, c=c, spatial=spatial)
    idx = idx % max(c, 2)
    target = _target(idx, c, kind)
    # float64 so that the comparison to 1e-6 also holds for reduction="sum" (values in the hundreds)
    logits, target = logits.double(), target.double()
    ref_kwargs = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    ref = DiceCELoss(**ref_kwargs)(logits, target)
    ours = MaskedDiceCELoss(**kwargs)
    ones = torch.ones((logits.shape[0], 1, *spatial), dtype=torch.float64)
    assert torch.allclose(ours(logits, target), ref, atol=TOL, rtol=0)
    assert torch.allclose(ours(logits, target, mask=ones), ref, atol=TOL, rtol=0)
    # an ignore value that never occurs changes nothing either
    if kind == "index":
        assert torch.allclose(MaskedDiceCELoss(ignore_index=255, **kwargs)(logits, target), ref, atol=TOL, rtol=0)
    # float32 inputs (as in training) agree to 1e-6 relative
    ref32 = DiceCELoss(**kwargs)(logits.float(), target.float())
    assert torch.allclose(ours(logits.float(), target.float(), mask=ones.float()), ref32, atol=TOL, rtol=TOL)


@pytest.mark.parametrize("kwargs,c,kind,spatial", CASES)
def test_mask_equals_monai_on_gathered_roi_pixels(kwargs, c, kind, spatial):
    """Single image: masking must equal MONAI's DiceCE on the ROI pixels alone (as a 1 x N image)."""
    logits, idx, roi, _ = _gen(2, b=1, c=c, spatial=spatial)
    idx = idx % max(c, 2)
    target = _target(idx, c, kind)
    logits, target = logits.double(), target.double()
    kwargs = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    sel = roi[0, 0].bool()
    logits_roi = logits[0][:, sel][None]  # (1, C, N)
    target_roi = target[0][:, sel][None]
    ref = DiceCELoss(**kwargs)(logits_roi, target_roi)
    ours = MaskedDiceCELoss(**kwargs)(logits, target, mask=roi)
    assert torch.allclose(ours, ref, atol=TOL, rtol=0)


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_numpy_reference_softmax_and_sigmoid():
    """Plain numpy masked DiceCE (nnU-Net style) for a batch with different ROI per image."""
    logits, idx, roi, _ = _gen(3, b=3, c=3)
    x, t, m = logits.double().numpy(), idx.numpy()[:, 0], roi.numpy()[:, 0]
    snr = sdr = 1e-5
    p = _np_softmax(x)
    oh = np.eye(3)[t].transpose(0, 3, 1, 2)
    mm = m[:, None]
    tp = (p * oh * mm).sum(axis=(2, 3))
    dice = 1 - (2 * tp + snr) / ((p * mm).sum(axis=(2, 3)) + (oh * mm).sum(axis=(2, 3)) + sdr)
    for include_background in (True, False):
        d = dice if include_background else dice[:, 1:]
        logp = np.log(np.take_along_axis(p, t[:, None], axis=1))[:, 0]
        ce = -(logp * m).sum() / m.sum()
        ref = d.mean() + ce
        ours = MaskedDiceCELoss(softmax=True, to_onehot_y=True, include_background=include_background)
        assert abs(ours(logits, idx.float(), mask=roi).item() - ref) < TOL

    y = (idx > 0).double().numpy()[:, 0]
    s = 1 / (1 + np.exp(-x[:, 0]))
    tp = (s * y * m).sum(axis=(1, 2))
    dice = 1 - (2 * tp + snr) / ((s * m).sum(axis=(1, 2)) + (y * m).sum(axis=(1, 2)) + sdr)
    bce = -(y * np.log(s) + (1 - y) * np.log(1 - s))
    ref = dice.mean() + (bce * m).sum() / m.sum()
    ours = MaskedDiceCELoss(sigmoid=True)(logits[:, :1], (idx > 0).float(), mask=roi)
    assert abs(ours.item() - ref) < TOL


INVARIANCE_CASES = [
    (dict(softmax=True, to_onehot_y=True), 3, "index"),
    (dict(softmax=True, to_onehot_y=True, batch=True, include_background=False, weight=[1.0, 2.0, 3.0]), 3, "index"),
    (dict(softmax=True, label_smoothing=0.1), 3, "onehot"),
    (dict(sigmoid=True, weight=[3.0]), 1, "binary"),
    (dict(sigmoid=True, reduction="sum", jaccard=True), 1, "binary"),
]


@pytest.mark.parametrize("kwargs,c,kind", INVARIANCE_CASES)
def test_outside_roi_changes_nothing_and_gets_zero_gradient(kwargs, c, kind):
    logits, idx, roi, g = _gen(4, c=c)
    idx = idx % max(c, 2)
    target = _target(idx, c, kind)
    loss = MaskedDiceCELoss(**kwargs)
    outside = roi < 0.5
    logits2 = torch.where(outside, torch.randn(logits.shape, generator=g) * 10, logits)
    idx2 = torch.where(outside, torch.randint(0, max(c, 2), idx.shape, generator=g), idx)
    target2 = _target(idx2, c, kind)
    assert not torch.equal(logits2, logits) and not torch.equal(target2, target)
    v1 = loss(logits, target, mask=roi)
    v2 = loss(logits2, target2, mask=roi)
    assert torch.allclose(v1, v2, atol=TOL, rtol=0)
    assert not torch.allclose(v1, loss(logits, target), atol=1e-4)  # the mask does something

    x = logits.clone().requires_grad_(True)
    loss(x, target, mask=roi).backward()
    grad_out = x.grad.masked_select(outside.expand_as(x))
    assert torch.count_nonzero(grad_out) == 0
    assert torch.count_nonzero(x.grad.masked_select(~outside.expand_as(x))) > 0


def test_ignore_index_equals_mask_and_combines_with_it():
    logits, idx, roi, g = _gen(5, c=3)
    ignored = torch.where(roi > 0.5, idx, torch.full_like(idx, 255)).float()
    kw = dict(softmax=True, to_onehot_y=True, weight=[0.3, 1.0, 2.0])
    by_mask = MaskedDiceCELoss(**kw)(logits, idx.float(), mask=roi)
    by_ignore = MaskedDiceCELoss(ignore_index=255, **kw)(logits, ignored)
    assert torch.allclose(by_mask, by_ignore, atol=TOL, rtol=0)
    # both: region = mask AND not ignored
    roi2 = (torch.rand(roi.shape, generator=g) > 0.3).float()
    both = MaskedDiceCELoss(ignore_index=255, **kw)(logits, ignored, mask=roi2)
    assert torch.allclose(both, MaskedDiceCELoss(**kw)(logits, idx.float(), mask=roi * roi2), atol=TOL, rtol=0)
    # one-hot targets carrying 255 in every channel (what PrepareBatchWithROI writes)
    oh = F.one_hot(idx[:, 0], 3).movedim(-1, 1).float()
    oh_ign = torch.where(roi > 0.5, oh, torch.full_like(oh, 255.0))
    kw1 = dict(softmax=True, weight=[0.3, 1.0, 2.0])
    assert torch.allclose(
        MaskedDiceCELoss(ignore_index=255, **kw1)(logits, oh_ign),
        MaskedDiceCELoss(**kw1)(logits, oh, mask=roi),
        atol=TOL,
        rtol=0,
    )
    # binary sigmoid label with 255 outside
    yb = (idx > 0).float()
    yb_ign = torch.where(roi > 0.5, yb, torch.full_like(yb, 255.0))
    assert torch.allclose(
        MaskedDiceCELoss(sigmoid=True, ignore_index=255)(logits[:, :1], yb_ign),
        MaskedDiceCELoss(sigmoid=True)(logits[:, :1], yb, mask=roi),
        atol=TOL,
        rtol=0,
    )


@pytest.mark.parametrize(
    "kwargs,c,kind",
    [
        (dict(softmax=True, to_onehot_y=True), 3, "index"),
        (dict(softmax=True, to_onehot_y=True, batch=True, weight=[1.0, 2.0, 3.0]), 3, "index"),
        (dict(sigmoid=True), 1, "binary"),
    ],
)
def test_empty_roi_is_finite_with_zero_gradient(kwargs, c, kind):
    logits, idx, _, _ = _gen(6, c=c)
    idx = idx % max(c, 2)
    target = _target(idx, c, kind)
    x = logits.clone().requires_grad_(True)
    value = MaskedDiceCELoss(**kwargs)(x, target, mask=torch.zeros_like(idx, dtype=torch.float32))
    assert torch.isfinite(value)
    assert abs(value.item()) < 1e-6  # Dice 1 - smooth_nr/smooth_dr = 0, CE 0/1 = 0
    value.backward()
    assert torch.count_nonzero(x.grad) == 0
    # one empty image in a batch: finite, the other image still trains
    x.grad = None
    mask = torch.zeros_like(idx, dtype=torch.float32)
    mask[1] = 1
    MaskedDiceCELoss(**kwargs)(x, target, mask=mask).backward()
    assert torch.count_nonzero(x.grad[0]) == 0 and torch.count_nonzero(x.grad[1]) > 0


def test_bad_inputs_raise_clear_errors():
    logits, idx, roi, _ = _gen(7)
    loss = MaskedDiceCELoss(softmax=True, to_onehot_y=True)
    with pytest.raises(ValueError, match="ROI mask must have shape"):
        loss(logits, idx.float(), mask=roi[:, 0])
    with pytest.raises(ValueError, match="spatial size"):
        loss(logits, idx.float(), mask=roi[..., :-1])
    with pytest.raises(ValueError, match="neither 1"):
        loss(logits, torch.cat([idx, idx], 1).float())
    with pytest.raises(ValueError, match="to_onehot_y"):
        MaskedDiceCELoss(softmax=True)(logits, idx.float())
    with pytest.raises(ValueError, match="ambiguous"):
        MaskedDiceCELoss(softmax=True, ignore_index=1)(logits, F.one_hot(idx[:, 0], 3).movedim(-1, 1).float())
    with pytest.raises(ValueError, match="smooth_dr"):
        MaskedDiceCELoss(smooth_dr=0.0)


def test_deep_supervision_weights_default_is_nnunet():
    w = deep_supervision_weights(4)
    assert np.allclose(w, np.array([1, 0.5, 0.25, 0.125]) / 1.875)
    assert deep_supervision_weights(3, [1, 1, 2], normalise=False) == [1.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="3 heads"):
        deep_supervision_weights(3, [1.0, 1.0])


def test_deep_supervision_full_and_smaller_heads():
    logits, idx, roi, g = _gen(8, b=2, c=3, spatial=(12, 16))
    base = MaskedDiceCELoss(softmax=True, to_onehot_y=True, ignore_index=255)
    ds = MaskedDeepSupervisionLoss(base)
    target = idx.float()
    # a single tensor is the base loss
    assert torch.allclose(ds(logits, target, mask=roi), base(logits, target, mask=roi), atol=TOL, rtol=0)
    # full-resolution heads (UNet++): weighted sum with 1/2^i normalised, head 0 weighted most
    heads = [logits, torch.randn(logits.shape, generator=g), torch.randn(logits.shape, generator=g)]
    ref = sum(w * base(h, target, mask=roi) for w, h in zip([4 / 7, 2 / 7, 1 / 7], heads))
    assert torch.allclose(ds(heads, target, mask=roi), ref, atol=TOL, rtol=0)
    # identical heads give the base loss (normalised weights)
    assert torch.allclose(ds([logits] * 3, target, mask=roi), base(logits, target, mask=roi), atol=TOL, rtol=0)
    # smaller heads: label and mask down-sampled by nearest neighbour; factor 2 "nearest-exact" takes odd pixels
    small = torch.randn((2, 3, 6, 8), generator=g)
    small_target, small_roi = target[..., 1::2, 1::2], roi[..., 1::2, 1::2]
    ref = (2 / 3) * base(logits, target, mask=roi) + (1 / 3) * base(small, small_target, mask=small_roi)
    assert torch.allclose(ds([logits, small], target, mask=roi), ref, atol=TOL, rtol=0)
    # an ignore label is carried through the down-sampling too
    ignored = torch.where(roi > 0.5, target, torch.full_like(target, 255.0))
    assert torch.allclose(ds([logits, small], ignored), ref, atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="does not fit"):
        ds([torch.randn((2, 3, 24, 32))], target)
    # explicit weights
    ds2 = MaskedDeepSupervisionLoss(base, weights=[1.0, 0.0], normalise=False)
    assert torch.allclose(ds2([logits, small], target, mask=roi), base(logits, target, mask=roi), atol=TOL, rtol=0)


def test_deep_supervision_with_unetpp_heads():
    """The wrapper consumes what our UNet++ returns in train mode (list, index 0 = final head)."""
    networks = pytest.importorskip("monai_unetzoo.networks")
    try:
        net = networks.get_network(
            "unetpp", spatial_dims=2, in_channels=1, out_channels=2, features=(4, 8, 16), deep_supervision=True
        )
    except (KeyError, TypeError) as e:  # pragma: no cover - depends on the networks package being complete
        pytest.skip(f"UNet++ with deep supervision not available: {e}")
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, 1, 16, 16), generator=g)
    y = (torch.rand((2, 1, 16, 16), generator=g) > 0.5).float()
    roi = (torch.rand((2, 1, 16, 16), generator=g) > 0.3).float()
    net.train()
    heads = net(x)
    assert isinstance(heads, (list, tuple)) and len(heads) >= 2
    base = MaskedDiceCELoss(softmax=True, to_onehot_y=True)
    value = MaskedDeepSupervisionLoss(base)(heads, y, mask=roi)
    w = deep_supervision_weights(len(heads))
    ref = sum(wi * base(h, y, mask=roi) for wi, h in zip(w, heads))
    assert torch.allclose(value, ref, atol=TOL, rtol=0)
    value.backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
