"""ROI-masked DiceCE loss and a deep-supervision wrapper that carries the ROI to every head.

Why our own loss: MONAI's ``DiceCELoss`` (1.6) takes no mask and no ignore label (its ``DiceLoss`` has an
``ignore_index``, but the cross-entropy half does not), and MONAI's ``MaskedDiceLoss`` multiplies the *logits*
by the mask before the activation, so softmax probabilities still leak mass from outside the ROI. Pixels outside
the field of view (a third of every DRIVE image) must contribute nothing to either term. We follow nnU-Net
(Isensee et al., Nat. Methods 2021; ``nnunetv2.training.loss.dice.MemoryEfficientSoftDiceLoss`` with
``loss_mask`` and ``RobustCrossEntropyLoss`` with ``ignore_label``): activation first, then zero both the
probabilities and the one-hot target outside the ROI before the Dice sums; cross-entropy per pixel, averaged over
the ROI only. The Dice formula, class weights, smoothing and reduction are MONAI's own ``DiceLoss`` (called on the
masked tensors), so with an all-ones mask the value equals ``monai.losses.DiceCELoss`` with the same settings.

Shapes: ``input`` logits (B, C, *spatial); ``target`` class indices (B, 1, *spatial) or one-hot / binary
(B, C, *spatial); ``mask`` (B, 1, *spatial), inside the ROI where ``mask > 0.5`` (so 0/1, bool and 0/255 masks
all work). 2D and 3D alike.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.losses.dice import DiceCEReduction
from monai.networks import one_hot
from monai.utils import look_up_option
from torch.nn.modules.loss import _Loss

__all__ = ["MaskedDiceCELoss", "MaskedDeepSupervisionLoss", "deep_supervision_weights", "roi_valid_region"]


def roi_valid_region(
    target: torch.Tensor, mask: torch.Tensor | None = None, ignore_index: int | None = None
) -> torch.Tensor | None:
    """Boolean region (B, 1, *spatial) scored by the loss, or ``None`` when every pixel counts.

    A pixel is inside when ``mask > 0.5`` (if a mask is given) and, if ``ignore_index`` is set, no channel of
    ``target`` equals ``ignore_index`` (so an index label with 255 outside the FOV, or a one-hot label whose
    channels were all set to 255 by :class:`monai_unetzoo.engines.PrepareBatchWithROI`, is excluded).

    Raises:
        ValueError: when the mask is not (B, 1, *spatial) with the target's batch and spatial size.
    """
    valid: torch.Tensor | None = None
    if mask is not None:
        if mask.dim() != target.dim() or mask.shape[1] != 1 or mask.shape[0] != target.shape[0]:
            raise ValueError(
                f"ROI mask must have shape (B, 1, *spatial) = {(target.shape[0], 1, *target.shape[2:])}, "
                f"got {tuple(mask.shape)}."
            )
        if mask.shape[2:] != target.shape[2:]:
            raise ValueError(
                f"ROI mask spatial size {tuple(mask.shape[2:])} differs from the target's {tuple(target.shape[2:])}."
            )
        valid = mask.to(device=target.device).float() > 0.5
    if ignore_index is not None:
        keep = (target != ignore_index).all(dim=1, keepdim=True)
        valid = keep if valid is None else valid & keep
    return valid


class MaskedDiceCELoss(_Loss):
    """Dice + cross-entropy computed inside a region of interest (ROI mask and/or ignore label).

    The arguments and their meaning are those of ``monai.losses.DiceCELoss`` (same defaults) plus
    ``ignore_index``; with no mask and no ignore value, or an all-ones mask, the value is identical to MONAI's
    (tested to 1e-6 for softmax, sigmoid, ``include_background=False``, ``batch=True``, class weights, smoothing
    terms, ``lambda_dice`` / ``lambda_ce``, ``jaccard``, ``squared_pred``, label smoothing and ``reduction="sum"``).
    MONAI's semantics are kept on purpose: the cross-entropy term is ``BCEWithLogits`` (``weight`` = ``pos_weight``)
    when ``input`` has one channel, otherwise softmax cross-entropy with class indices (target (B, 1, ...)) or
    with class probabilities (target (B, C, ...)); ``sigmoid`` / ``softmax`` / ``other_act`` only act on the Dice
    term; ``weight`` rescales both terms (for Dice ``weight[1:]`` when ``include_background=False``).

    Masking (nnU-Net style):

    - Dice: after the activation (and one-hot conversion of the target), probabilities and target are set to 0
      outside the ROI, then MONAI's ``DiceLoss`` sums tp / fp / fn per image and class (or over the batch with
      ``batch=True``). An image whose ROI is empty therefore gets ``1 - smooth_nr / smooth_dr`` (0 with the
      defaults), finite as long as ``smooth_dr > 0`` (enforced).
    - Cross-entropy: per-pixel loss (``reduction="none"``), set to 0 outside the ROI, summed, and divided by the
      normaliser PyTorch's own ``mean`` would use restricted to the ROI: the number of ROI pixels (times channels
      for BCE) or, for class-index targets with ``weight``, the sum of ``weight[target]`` over ROI pixels. An
      empty ROI gives 0 / 1 = 0 (normaliser clamped to 1 only when it is 0). ``reduction="sum"`` sums over the ROI.
    - Gradients with respect to logits outside the ROI are exactly zero (``torch.where``, no cross-pixel terms;
      an ``other_act`` that mixes pixels would break this).

    ``ignore_index``: pixels where any channel of the target equals it are added to the outside region, and the
    value is replaced by 0 before one-hot conversion, so ``one_hot`` never sees e.g. 255. For one-hot targets
    (C > 1 channels) it must not be 0 or 1 (those are the one-hot values themselves).

    Args:
        include_background, to_onehot_y, sigmoid, softmax, other_act, squared_pred, jaccard, reduction, smooth_nr,
        smooth_dr, batch, weight, lambda_dice, lambda_ce, label_smoothing: as ``monai.losses.DiceCELoss``
            (``weight`` may also be a list, e.g. from bundle JSON).
        ignore_index: label value marking pixels outside the ROI (e.g. 255 in the DRIVE recipe), or None.
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        squared_pred: bool = False,
        jaccard: bool = False,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        weight: torch.Tensor | Sequence[float] | None = None,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        label_smoothing: float = 0.0,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        self.reduction = look_up_option(reduction, DiceCEReduction).value
        if lambda_dice < 0.0:
            raise ValueError(f"lambda_dice should be no less than 0.0, got {lambda_dice}.")
        if lambda_ce < 0.0:
            raise ValueError(f"lambda_ce should be no less than 0.0, got {lambda_ce}.")
        if smooth_dr <= 0.0:
            raise ValueError(f"smooth_dr must be > 0 so that an empty ROI gives a finite Dice term, got {smooth_dr}.")
        if int(sigmoid) + int(softmax) + int(other_act is not None) > 1:
            raise ValueError("Incompatible values: more than 1 of [sigmoid=True, softmax=True, other_act is not None].")
        if other_act is not None and not callable(other_act):
            raise TypeError(f"other_act must be None or callable but is {type(other_act).__name__}.")
        w = None if weight is None else torch.as_tensor(weight, dtype=torch.float32)
        if w is not None and w.min() < 0:
            raise ValueError(f"class weights must be >= 0, got {w.tolist()}.")
        self.register_buffer("class_weight", w)
        self.class_weight: torch.Tensor | None
        self.include_background = include_background
        self.to_onehot_y = to_onehot_y
        self.sigmoid = sigmoid
        self.softmax = softmax
        self.other_act = other_act
        self.lambda_dice = float(lambda_dice)
        self.lambda_ce = float(lambda_ce)
        self.label_smoothing = float(label_smoothing)
        self.ignore_index = ignore_index
        dice_weight = w[1:] if (w is not None and not include_background) else w
        # MONAI's DiceLoss does the tp/fp/fn sums, smoothing, class weights and reduction; it receives already
        # activated, one-hot, background-sliced and masked tensors, so its own activation/one-hot stay off.
        self.dice = DiceLoss(
            include_background=True,
            to_onehot_y=False,
            sigmoid=False,
            softmax=False,
            other_act=None,
            squared_pred=squared_pred,
            jaccard=jaccard,
            reduction=self.reduction,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            weight=dice_weight,
        )

    # -- the two terms -------------------------------------------------------------------------------------------
    def dice_term(self, input: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Dice loss on ROI pixels; ``target`` already cleaned of ``ignore_index`` values."""
        n_pred_ch = input.shape[1]
        probs = input
        if self.sigmoid:
            probs = torch.sigmoid(probs)
        if self.softmax:
            if n_pred_ch == 1:
                warnings.warn("single channel prediction, `softmax=True` ignored.", stacklevel=3)
            else:
                probs = torch.softmax(probs, 1)
        if self.other_act is not None:
            probs = self.other_act(probs)
        if self.to_onehot_y:
            if n_pred_ch == 1:
                warnings.warn("single channel prediction, `to_onehot_y=True` ignored.", stacklevel=3)
            else:
                target = one_hot(target, num_classes=n_pred_ch)
        if not self.include_background:
            if n_pred_ch == 1:
                warnings.warn("single channel prediction, `include_background=False` ignored.", stacklevel=3)
            else:
                target = target[:, 1:]
                probs = probs[:, 1:]
        if target.shape != probs.shape:
            raise ValueError(
                f"ground truth has different shape ({tuple(target.shape)}) from input ({tuple(probs.shape)}); "
                "for class-index targets (B, 1, ...) with C > 1 set to_onehot_y=True."
            )
        if valid is not None:
            zero = torch.zeros((), dtype=probs.dtype, device=probs.device)
            probs = torch.where(valid, probs, zero)
            target = torch.where(valid, target.to(probs.dtype), zero)
        return self.dice(probs, target)  # type: ignore[no-any-return]

    def ce_term(self, input: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Cross-entropy (softmax CE for C > 1, BCE-with-logits for C == 1) averaged over ROI pixels."""
        w = None if self.class_weight is None else self.class_weight.to(input.dtype)
        n_pred_ch = input.shape[1]
        if n_pred_ch != 1:
            if target.shape[1] == 1:  # class indices
                idx = target[:, 0].long()
                per_pixel = F.cross_entropy(
                    input, idx, weight=w, reduction="none", label_smoothing=self.label_smoothing
                )
                # PyTorch's "mean" for index targets divides by sum(weight[target])
                norm = w[idx] if w is not None else torch.ones_like(per_pixel)
            else:  # class probabilities / one-hot; PyTorch's "mean" divides by the pixel count
                tgt = target if torch.is_floating_point(target) else target.to(input.dtype)
                per_pixel = F.cross_entropy(
                    input, tgt, weight=w, reduction="none", label_smoothing=self.label_smoothing
                )
                norm = torch.ones_like(per_pixel)
            region = None if valid is None else valid[:, 0]
        else:
            tgt = target if torch.is_floating_point(target) else target.to(input.dtype)
            per_pixel = F.binary_cross_entropy_with_logits(input, tgt, pos_weight=w, reduction="none")
            norm = torch.ones_like(per_pixel)
            region = valid
        if region is not None:
            zero = torch.zeros((), dtype=per_pixel.dtype, device=per_pixel.device)
            per_pixel = torch.where(region, per_pixel, zero)
            norm = torch.where(region, norm, zero)
        total = per_pixel.sum()
        if self.reduction == "sum":
            return total
        denom = norm.sum()
        return total / torch.where(denom > 0, denom, torch.ones_like(denom))

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            input: logits (B, C, *spatial).
            target: class indices (B, 1, *spatial) or one-hot / binary (B, C, *spatial); may hold ``ignore_index``.
            mask: ROI (B, 1, *spatial), inside where ``> 0.5``; None = whole image.

        Returns:
            scalar loss ``lambda_dice * dice + lambda_ce * ce``.
        """
        if input.dim() != target.dim():
            raise ValueError(
                f"input {tuple(input.shape)} and target {tuple(target.shape)} must have the same number of "
                "dimensions; give class-index targets as (B, 1, *spatial)."
            )
        if target.shape[1] != 1 and target.shape[1] != input.shape[1]:
            raise ValueError(
                "number of channels for target is neither 1 (class indices) nor the same as input, "
                f"got input {tuple(input.shape)} and target {tuple(target.shape)}."
            )
        if input.shape[0] != target.shape[0] or input.shape[2:] != target.shape[2:]:
            raise ValueError(
                f"input {tuple(input.shape)} and target {tuple(target.shape)} differ in batch/spatial size."
            )
        ignore = self.ignore_index
        if ignore is not None and target.shape[1] > 1 and ignore in (0, 1):
            raise ValueError(f"ignore_index={ignore} is ambiguous for one-hot targets (values 0/1); use e.g. 255.")
        valid = roi_valid_region(target, mask, ignore)
        if ignore is not None:
            # so that one_hot / CE / BCE never see the sentinel; those pixels are outside `valid` anyway
            target = torch.where(target == ignore, torch.zeros_like(target), target)
        dice_loss = self.dice_term(input, target, valid)
        ce_loss = self.ce_term(input, target, valid)
        return self.lambda_dice * dice_loss + self.lambda_ce * ce_loss


def deep_supervision_weights(
    num_heads: int, weights: Sequence[float] | None = None, normalise: bool = True
) -> list[float]:
    """Weights of the deep-supervision heads, index 0 = the final (full-resolution, deepest) head.

    Default as nnU-Net (Isensee et al. 2021, ``nnUNetTrainer._get_deep_supervision_scales`` / loss weights):
    ``1 / 2**i`` for head i, normalised to sum 1. (nnU-Net additionally gives its lowest-resolution output weight 0;
    our UNet++ heads X(0,j) are all full resolution, so every head keeps its weight.)
    """
    if num_heads < 1:
        raise ValueError(f"deep supervision needs at least one head, got {num_heads}.")
    if weights is None:
        w = [0.5**i for i in range(num_heads)]
    else:
        w = [float(x) for x in weights]
        if len(w) != num_heads:
            raise ValueError(f"got {len(w)} deep-supervision weights for {num_heads} heads.")
        if min(w) < 0:
            raise ValueError(f"deep-supervision weights must be >= 0, got {w}.")
    if normalise:
        s = sum(w)
        if s <= 0:
            raise ValueError(f"deep-supervision weights sum to {s}; cannot normalise.")
        w = [x / s for x in w]
    return w


class MaskedDeepSupervisionLoss(_Loss):
    """Apply a (maskable) loss to every head of a deeply supervised network and sum with weights.

    Unlike ``monai.losses.DeepSupervisionLoss`` this passes the ROI ``mask`` on (down-sampled with the label), and
    normalises the default ``1/2**i`` weights to sum 1 as nnU-Net does, so identical heads give the base loss.

    Head order: index 0 is the final output; for our UNet++ (Zhou et al., DLMIA 2018) in training mode that is
    X(0,L), followed by X(0,L-1) ... X(0,1). A head smaller than the label gets the label and the mask
    down-sampled by nearest neighbour (``"nearest-exact"``, as nnU-Net v2 and MONAI do), which keeps class indices,
    one-hot values and ``ignore_index`` values intact. A single tensor (e.g. UNet++ in eval mode) is passed
    straight to the wrapped loss.

    Args:
        loss: the per-head loss, called as ``loss(head, target, mask=mask)`` (or ``loss(head, target)`` when
            ``mask`` is None), e.g. :class:`MaskedDiceCELoss`.
        weights: per-head weights (index 0 = final head); default ``1/2**i``.
        normalise: divide the weights by their sum (default True).
    """

    def __init__(self, loss: _Loss | Callable, weights: Sequence[float] | None = None, normalise: bool = True) -> None:
        super().__init__()
        self.loss = loss
        self.weights = None if weights is None else [float(x) for x in weights]
        self.normalise = normalise
        self.interp_mode = "nearest-exact"

    def _resize_like(self, t: torch.Tensor, head: torch.Tensor, what: str) -> torch.Tensor:
        size = tuple(head.shape[2:])
        if tuple(t.shape[2:]) == size:
            return t
        if any(h > s for h, s in zip(size, t.shape[2:])) or len(size) != t.dim() - 2:
            raise ValueError(
                f"deep-supervision head of spatial size {size} does not fit the {what} of size {tuple(t.shape[2:])}; "
                "heads may only be smaller than (or equal to) the label."
            )
        out = F.interpolate(t.float(), size=size, mode=self.interp_mode)
        return out.to(t.dtype)

    def forward(
        self, input: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """
        Args:
            input: logits (B, C, *spatial) or a list/tuple of heads (B, C, *spatial_i), index 0 = final head.
            target: label (B, 1 or C, *spatial) at full resolution.
            mask: ROI (B, 1, *spatial) or None.
        """
        if input is None:
            raise ValueError("input shouldn't be None.")
        if not isinstance(input, (list, tuple)):
            return self.loss(input, target) if mask is None else self.loss(input, target, mask=mask)
        heads = list(input)
        weights = deep_supervision_weights(len(heads), self.weights, self.normalise)
        total: torch.Tensor | None = None
        for w, head in zip(weights, heads):
            t = self._resize_like(target, head, "label")
            if mask is None:
                value = self.loss(head, t)
            else:
                value = self.loss(head, t, mask=self._resize_like(mask, head, "ROI mask"))
            total = w * value if total is None else total + w * value
        assert total is not None
        return total
