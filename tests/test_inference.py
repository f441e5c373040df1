"""Tests of ``monai_unetzoo.inference`` (sliding-window predictor).

References are independent of the code under test: a direct full-volume forward pass, MONAI's own
``sliding_window_inference`` driven by a hand-written per-window function, flips averaged by hand, numpy argmax,
and the CPU flags of ``/proc/cpuinfo``. Volumes are small (~1x1x40x48x36) and networks tiny, so the file runs in
seconds on 2 cores.
"""

from __future__ import annotations

import itertools
import os
import platform
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

from monai_unetzoo.inference import (
    SlidingWindowPredictor,
    channels_last_network,
    cpu_has_native_bf16,
    mirror_axis_combinations,
    resolve_autocast_dtype,
    scores_to_labels,
)

SHAPE = (1, 1, 40, 48, 36)
ROI = (24, 24, 24)


def tiny_unet(out_channels: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return UNet(3, 1, out_channels, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()


def random_volume(shape=SHAPE, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g)


class IntensityBandNet(nn.Module):
    """A 'trained-like' classifier whose argmax is robust: class k wins where the locally smoothed intensity is
    nearest to ``centers[k]`` (logit_k = -scale * |smooth(x) - c_k|, built from convolutions and ReLUs so that
    autocast changes its arithmetic). A symmetric (box) smoothing kernel makes it exactly flip-equivariant;
    an asymmetric one does not."""

    def __init__(self, centers=(-1.5, -0.3, 0.8), scale: float = 4.0, kernel: torch.Tensor | None = None):
        super().__init__()
        k = torch.ones(1, 1, 3, 3, 3) if kernel is None else kernel.reshape(1, 1, 3, 3, 3)
        n = len(centers)
        self.smooth = nn.Conv3d(1, 1, 3, padding=1, bias=False)
        self.hidden = nn.Conv3d(1, 2 * n, 1)
        self.out = nn.Conv3d(2 * n, n, 1, bias=False)
        with torch.no_grad():
            self.smooth.weight.copy_(k / k.sum())
            self.hidden.weight.copy_(torch.tensor([1.0, -1.0] * n).view(2 * n, 1, 1, 1, 1))
            self.hidden.bias.copy_(torch.tensor([v for c in centers for v in (-c, c)]))
            w = torch.zeros(n, 2 * n)
            for i in range(n):
                w[i, 2 * i] = w[i, 2 * i + 1] = -scale
            self.out.weight.copy_(w.view(n, 2 * n, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(self.smooth(x))))


def dice_per_class(a: torch.Tensor, b: torch.Tensor, num_classes: int) -> list[float]:
    """Dice of each class between two label maps (numpy; 1.0 for a class absent from both)."""
    a, b = np.asarray(a), np.asarray(b)
    out = []
    for k in range(num_classes):
        pa, pb = a == k, b == k
        denom = pa.sum() + pb.sum()
        out.append(1.0 if denom == 0 else 2.0 * np.logical_and(pa, pb).sum() / denom)
    return out


@pytest.fixture
def hippocampus_volume(hippocampus_dir: Path) -> torch.Tensor:
    """One real MSD Task04 case (about 36x50x36 voxels), z-score normalised, as (1, 1, *spatial)."""
    import nibabel as nib

    path = sorted((hippocampus_dir / "imagesTr").glob("hippocampus_*.nii.gz"))[0]
    a = np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float32)
    a = (a - a.mean()) / a.std()
    return torch.from_numpy(a)[None, None]


# ---------------------------------------------------------------------------------------------------------------
# Full-volume equality and agreement with MONAI


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("roi", [SHAPE[2:], (-1, -1, -1)])
def test_roi_covering_volume_equals_direct_forward(mode, roi):
    net, x = tiny_unet(), random_volume()
    with torch.no_grad():
        logits = net(x)
    out = SlidingWindowPredictor(roi, mode=mode)(x, net)
    assert out.shape == (1, 3, *SHAPE[2:]) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.softmax(logits, 1), atol=1e-5, rtol=0)
    raw = SlidingWindowPredictor(roi, mode=mode, activation=None)(x, net)
    torch.testing.assert_close(raw, logits, atol=1e-5, rtol=1e-5)


def test_sigmoid_single_channel_and_labels():
    net, x = tiny_unet(out_channels=1), random_volume()
    with torch.no_grad():
        prob = torch.sigmoid(net(x))
    p = SlidingWindowPredictor(SHAPE[2:], activation="sigmoid")
    torch.testing.assert_close(p(x, net), prob, atol=1e-5, rtol=0)
    labels = p.predict_labels(x, net)
    assert labels.shape == (1, 1, *SHAPE[2:]) and labels.dtype == torch.uint8
    # voxels within float noise of 0.5 could legitimately differ; there are none for this seed
    assert torch.equal(labels, (prob > 0.5).to(torch.uint8))


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
@pytest.mark.parametrize("overlap,sw_batch_size", [(0.5, 4), (0.25, 1), (0.6, 3)])
def test_agrees_with_monai_sliding_window_inference(mode, overlap, sw_batch_size):
    net, x = tiny_unet(), random_volume()

    def softmax_net(w):  # the reference: MONAI's own loop with an activation applied per window
        return torch.softmax(net(w), dim=1)

    with torch.no_grad():
        ref = sliding_window_inference(x, ROI, sw_batch_size, softmax_net, overlap=overlap, mode=mode)
        ref_raw = sliding_window_inference(x, ROI, sw_batch_size, net, overlap=overlap, mode=mode)
    p = SlidingWindowPredictor(ROI, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode)
    torch.testing.assert_close(p(x, net), ref, atol=1e-5, rtol=0)
    p_raw = SlidingWindowPredictor(ROI, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode, activation=None)
    torch.testing.assert_close(p_raw(x, net), ref_raw, atol=1e-5, rtol=1e-5)


def test_gaussian_and_constant_blending_differ_and_default_is_gaussian():
    net, x = tiny_unet(), random_volume()
    gauss = SlidingWindowPredictor(ROI)(x, net)
    const = SlidingWindowPredictor(ROI, mode="constant")(x, net)
    assert (gauss - const).abs().max() > 1e-3  # the mode really reaches MONAI's blending
    p = SlidingWindowPredictor(ROI)
    assert (p.sw_batch_size, p.overlap, str(p.mode)) == (4, 0.5, "gaussian")


@pytest.mark.parametrize("mode", ["gaussian", "constant"])
def test_pointwise_network_is_blending_invariant(mode):
    """For a voxel-wise network every window predicts the same value at a voxel, so any normalised blend equals
    the direct forward pass: checks the weight normalisation independently of MONAI's reference."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv3d(1, 4, 1), nn.Tanh(), nn.Conv3d(4, 3, 1)).eval()
    x = random_volume((2, 1, 31, 40, 29))
    with torch.no_grad():
        ref = torch.softmax(net(x), 1)
    out = SlidingWindowPredictor((16, 24, 16), sw_batch_size=3, overlap=0.4, mode=mode)(x, net)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_two_dimensional_input():
    torch.manual_seed(0)
    net = UNet(2, 1, 2, channels=(4, 8), strides=(2,), num_res_units=1).eval()
    x = random_volume((1, 1, 40, 36))
    with torch.no_grad():
        ref = sliding_window_inference(x, (16, 16), 4, lambda w: torch.softmax(net(w), 1), 0.5, "gaussian")
    torch.testing.assert_close(SlidingWindowPredictor((16, 16))(x, net), ref, atol=1e-5, rtol=0)


def test_channels_last_does_not_change_values():
    net, x = tiny_unet(), random_volume()
    a = SlidingWindowPredictor(ROI, channels_last=True)(x, net)
    b = SlidingWindowPredictor(ROI, channels_last=False)(x, net)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Test-time augmentation


def test_mirror_axis_combinations():
    assert mirror_axis_combinations(None, 3) == [()]
    combos = mirror_axis_combinations((0, 2, -3), 3)  # -3 is axis 0 again
    assert combos == [(), (2,), (4,), (2, 4)]
    assert len(mirror_axis_combinations((0, 1, 2), 3)) == 8
    with pytest.raises(ValueError, match="out of range"):
        mirror_axis_combinations((3,), 3)


def test_tta_single_window_equals_hand_averaged_flips():
    net, x = tiny_unet(), random_volume()  # a random net is not flip-equivariant: TTA must change its output
    axes = (0, 1, 2)
    with torch.no_grad():
        ref = torch.zeros(1, 3, *SHAPE[2:])
        subsets = [c for r in range(4) for c in itertools.combinations([2, 3, 4], r)]
        for dims in subsets:
            xf = torch.flip(x, dims) if dims else x
            pf = torch.softmax(net(xf), 1)
            ref += torch.flip(pf, dims) if dims else pf
        ref /= len(subsets)
        plain = torch.softmax(net(x), 1)
    out = SlidingWindowPredictor(SHAPE[2:], tta_axes=axes)(x, net)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert (out - plain).abs().max() > 1e-3


def test_tta_multi_window_matches_monai_with_hand_written_tta():
    net, x = tiny_unet(), random_volume()
    axes_dims = [(), (3,)]  # tta over spatial axis 1 only

    def tta_softmax(w):
        return sum(torch.flip(torch.softmax(net(torch.flip(w, d)), 1), d) if d else torch.softmax(net(w), 1) for d in axes_dims) / 2

    with torch.no_grad():
        ref = sliding_window_inference(x, ROI, 2, tta_softmax, overlap=0.5, mode="gaussian")
    out = SlidingWindowPredictor(ROI, sw_batch_size=2, tta_axes=1)(x, net)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_tta_flip_equivariant_network_equals_plain():
    net, x = IntensityBandNet().eval(), random_volume()  # box smoothing + voxel-wise layers: flip-equivariant
    plain = SlidingWindowPredictor(ROI)(x, net)
    tta = SlidingWindowPredictor(ROI, tta_axes=(0, 1, 2))(x, net)
    torch.testing.assert_close(tta, plain, atol=1e-5, rtol=0)


def test_tta_agrees_with_plain_on_real_volume(hippocampus_volume):
    """A nearly but not exactly flip-equivariant network, as trained ones are (box smoothing kernel with weights
    perturbed by up to +-10 %), with a robust argmax: TTA changes the probabilities (by up to ~0.09) but the argmax
    maps agree with Dice >= 0.99 per class. (A strongly asymmetric kernel gives Dice ~0.95: TTA then really averages
    four different filters, which is the point of TTA, not an error.)"""
    g = torch.Generator().manual_seed(3)
    net = IntensityBandNet(kernel=1 + 0.1 * (2 * torch.rand(27, generator=g) - 1)).eval()
    x = hippocampus_volume
    plain = SlidingWindowPredictor(ROI)(x, net)
    tta = SlidingWindowPredictor(ROI, tta_axes=(0, 1, 2))(x, net)
    assert (tta - plain).abs().max() > 1e-3
    d = dice_per_class(plain.argmax(1), tta.argmax(1), 3)
    assert min(d) >= 0.99, d


# ---------------------------------------------------------------------------------------------------------------
# Mixed precision


def test_resolve_autocast_dtype():
    assert resolve_autocast_dtype(None, "cpu") is None
    assert resolve_autocast_dtype(False, "cpu") is None
    assert resolve_autocast_dtype("fp32", "cpu") is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert resolve_autocast_dtype("bf16", "cpu") == torch.bfloat16
        assert resolve_autocast_dtype("fp16", "cpu") == torch.float16
        assert resolve_autocast_dtype(torch.bfloat16, "cpu") == torch.bfloat16
    assert resolve_autocast_dtype("auto", "cpu") == (torch.bfloat16 if cpu_has_native_bf16() else None)
    assert resolve_autocast_dtype("auto", "meta") is None
    with pytest.raises(ValueError, match="amp"):
        resolve_autocast_dtype("int8", "cpu")
    with pytest.raises(ValueError, match="amp"):
        SlidingWindowPredictor(ROI, amp="float8")


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64") or not os.path.exists("/proc/cpuinfo"),
    reason="the reference is the x86 flag list of /proc/cpuinfo",
)
def test_cpu_bf16_detection_matches_cpuinfo():
    flags: set[str] = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    assert cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_agrees_with_fp32_on_real_volume(hippocampus_volume, amp):
    net, x = IntensityBandNet().eval(), hippocampus_volume
    ref = SlidingWindowPredictor(ROI)(x, net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # emulated fp16/bf16 on some CPUs: slower, same semantics
        out = SlidingWindowPredictor(ROI, amp=amp)(x, net)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    diff = (out - ref).abs().max().item()
    assert 0 < diff < 0.1  # autocast really changed the arithmetic, and only slightly
    d = dice_per_class(ref.argmax(1), out.argmax(1), 3)
    assert min(d) >= 0.99, d


def test_amp_bf16_with_unet_and_tta_on_real_volume(hippocampus_volume):
    """Untrained MONAI UNet: its margins are small, yet bf16 autocast keeps the argmax map (Dice >= 0.99)."""
    net, x = tiny_unet(), hippocampus_volume
    ref = SlidingWindowPredictor(ROI)(x, net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = SlidingWindowPredictor(ROI, amp="bf16")(x, net)
    d = dice_per_class(ref.argmax(1), out.argmax(1), 3)
    assert min(d) >= 0.99, d
    # TTA + AMP against TTA in fp32
    ref_tta = SlidingWindowPredictor(ROI, tta_axes=(0, 1))(x, net)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out_tta = SlidingWindowPredictor(ROI, tta_axes=(0, 1), amp="bf16")(x, net)
    d = dice_per_class(ref_tta.argmax(1), out_tta.argmax(1), 3)
    assert min(d) >= 0.99, d


# ---------------------------------------------------------------------------------------------------------------
# Devices, dtypes, modes, network output forms


@pytest.mark.parametrize("dtype", [torch.float64, torch.int16, torch.float16])
def test_output_dtype_and_device(dtype):
    net = tiny_unet()
    x32 = (random_volume() * 100).round()
    ref = SlidingWindowPredictor(ROI, activation=None)(x32, net)
    p = SlidingWindowPredictor(ROI, activation=None, sw_device="cpu", device=torch.device("cpu"))
    out = p(x32.to(dtype), net)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)  # the values 0, +-1, ... +-400 are exact in all
    assert out.device == p(x32, net, device="cpu").device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_windows_on_gpu_accumulator_on_cpu():
    net, x = tiny_unet(), random_volume()
    ref = SlidingWindowPredictor(ROI)(x, net)
    out = SlidingWindowPredictor(ROI, sw_device="cuda", device="cpu")(x, net.cuda())
    assert out.device.type == "cpu" and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=0)
    out_amp = SlidingWindowPredictor(ROI, device="cpu", amp="auto")(x, net)  # sw_device from the network
    assert out_amp.device.type == "cpu" and out_amp.dtype == torch.float32
    assert min(dice_per_class(ref.argmax(1), out_amp.argmax(1), 3)) >= 0.99


class TwoHeads(nn.Module):
    """Deep-supervision style: always returns [final head, auxiliary head]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv3d(1, 3, 3, padding=1)
        self.b = nn.Conv3d(1, 3, 3, padding=1)

    def forward(self, x):
        return [self.a(x), self.b(x)]


@pytest.mark.parametrize("container", [list, tuple])
def test_deep_supervision_yields_first_head(container):
    net, x = TwoHeads(), random_volume()
    if container is tuple:
        net.forward = lambda inp: tuple(TwoHeads.forward(net, inp))  # type: ignore[method-assign]
    with torch.no_grad():
        ref = sliding_window_inference(x, ROI, 4, lambda w: torch.softmax(net.a(w), 1), 0.5, "gaussian")
    torch.testing.assert_close(SlidingWindowPredictor(ROI)(x, net), ref, atol=1e-5, rtol=0)


def test_unetpp_deep_supervision_train_mode_restored():
    from monai_unetzoo.networks import get_network

    torch.manual_seed(0)
    net = get_network("unetpp", spatial_dims=3, in_channels=1, out_channels=3, features=(4, 8, 16), deep_supervision=True)
    x = random_volume((1, 1, 24, 24, 24))
    net.train()
    assert isinstance(net(x), list)  # train mode: the list of heads
    out = SlidingWindowPredictor((24, 24, 24))(x, net)
    assert net.training  # restored
    net.eval()
    with torch.no_grad():
        ref = torch.softmax(net(x), 1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    # with eval_mode=False the caller's train mode is kept and the first (final) head of the list is used
    net.train()
    with torch.no_grad():
        ref_train = torch.softmax(net(x)[0], 1)  # batch norm in train mode: batch statistics, same single window
    out_train = SlidingWindowPredictor((24, 24, 24), eval_mode=False)(x, net)
    torch.testing.assert_close(out_train, ref_train, atol=1e-5, rtol=0)


def test_eval_mode_per_submodule_restored_and_dropout_off():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.Dropout(0.5), nn.Conv3d(4, 2, 1))
    net[1].running_mean.uniform_(-0.5, 0.5)
    net.train()
    net[1].eval()  # a caller-frozen batch norm must stay frozen after the call
    x = random_volume()
    p = SlidingWindowPredictor(ROI)
    a, b = p(x, net), p(x, net)
    torch.testing.assert_close(a, b, atol=0, rtol=0)  # dropout off
    assert net.training and net[0].training and net[2].training and not net[1].training
    stats = net[1].running_mean.clone()
    net.eval()
    with torch.no_grad():
        ref = sliding_window_inference(x, ROI, 4, lambda w: torch.softmax(net(w), 1), 0.5, "gaussian")
    torch.testing.assert_close(a, ref, atol=1e-5, rtol=0)
    assert torch.equal(stats, net[1].running_mean)


def test_output_is_ordinary_tensor_and_metatensor_kept():
    net = tiny_unet()
    affine = torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0], dtype=torch.float64))
    x = MetaTensor(random_volume(), affine=affine)
    out = SlidingWindowPredictor(ROI)(x, net)
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, affine)
    assert not out.is_inference() and not out.requires_grad
    out += 1  # post-processing may modify the output in place
    labels = scores_to_labels(out)
    assert isinstance(labels, MetaTensor) and torch.equal(labels.affine, affine)


def test_works_as_supervised_evaluator_inferer_from_config():
    from monai.bundle import ConfigParser
    from monai.engines import SupervisedEvaluator

    net, x = tiny_unet(), random_volume()
    parser = ConfigParser(
        {
            "inferer": {
                "_target_": "monai_unetzoo.inference.SlidingWindowPredictor",
                "roi_size": list(ROI),
                "sw_batch_size": 2,
                "tta_axes": [0],
            }
        }
    )
    inferer = parser.get_parsed_content("inferer")
    assert isinstance(inferer, SlidingWindowPredictor)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=[{"image": x, "label": torch.zeros_like(x)}], network=net, inferer=inferer
    )
    evaluator.run()
    ref = SlidingWindowPredictor(ROI, sw_batch_size=2, tta_axes=0)(x, net)
    torch.testing.assert_close(evaluator.state.output[0]["pred"], ref[0], atol=1e-6, rtol=0)  # decollated


# ---------------------------------------------------------------------------------------------------------------
# Labels and errors


def test_scores_to_labels_matches_numpy():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(2, 5, 9, 7, 6, generator=g)
    labels = scores_to_labels(scores, chunk_voxels=100)  # many slabs
    assert labels.shape == (2, 1, 9, 7, 6) and labels.dtype == torch.uint8
    np.testing.assert_array_equal(labels[:, 0].numpy(), np.argmax(scores.numpy(), axis=1))
    thr = scores_to_labels(scores, mode="threshold", threshold=0.3)
    assert thr.shape == scores.shape and thr.dtype == torch.uint8
    np.testing.assert_array_equal(thr.numpy(), (scores.numpy() > 0.3).astype(np.uint8))
    many_scores = torch.rand(1, 300, 4, 4, generator=g)
    many = scores_to_labels(many_scores)
    assert many.dtype == torch.int16
    np.testing.assert_array_equal(many[:, 0].numpy(), np.argmax(many_scores.numpy(), axis=1))
    with pytest.raises(ValueError, match="mode"):
        scores_to_labels(scores, mode="max")


def test_scores_to_labels_ties_and_nan_as_torch_argmax():
    """Ties go to the first maximal class and the first NaN wins, exactly as torch.argmax (and numpy) decide."""
    g = torch.Generator().manual_seed(3)
    scores = torch.randint(0, 3, (2, 4, 6, 5, 7), generator=g).float()  # many ties
    nan_at = torch.rand(scores.shape, generator=g) < 0.1
    scores[nan_at] = float("nan")
    labels = scores_to_labels(scores, chunk_voxels=64)
    np.testing.assert_array_equal(labels[:, 0].numpy(), np.argmax(scores.numpy(), axis=1))
    assert nan_at.any(1).any() and (scores == scores).all(1).any()  # both kinds of voxels are present
    np.testing.assert_array_equal(labels[:, 0].long().numpy(), scores.argmax(dim=1).numpy())


def test_predict_labels_argmax():
    net, x = tiny_unet(), random_volume()
    p = SlidingWindowPredictor(ROI)
    labels = p.predict_labels(x, net)
    np.testing.assert_array_equal(labels[:, 0].numpy(), p(x, net).argmax(1).numpy())


def test_clear_errors():
    x = random_volume()
    with pytest.raises(ValueError, match="sigmoid"):
        SlidingWindowPredictor(ROI)(x, tiny_unet(out_channels=1))
    with pytest.raises(ValueError, match="spatial dims"):
        SlidingWindowPredictor((24, 24))(x, tiny_unet())
    with pytest.raises(ValueError, match=r"\(B, C_in"):
        SlidingWindowPredictor(ROI)(x[0, 0], tiny_unet())
    with pytest.raises(ValueError, match="activation"):
        SlidingWindowPredictor(ROI, activation="relu")
    with pytest.raises(TypeError, match="dict"):
        SlidingWindowPredictor(ROI)(x, lambda w: {"pred": w})
    with pytest.raises(ValueError, match="sw_device"):
        SlidingWindowPredictor(ROI, sw_device="cpu")(x, tiny_unet().to("meta"))


# ---------------------------------------------------------------------------------------------------------------
# Memory


def test_peak_memory_has_no_full_volume_copy_per_class(tmp_path):
    """Peak RSS growth of one call, measured in a fresh process, stays below input + accumulator + count map +
    a window working set, i.e. well under what one more float32 (B, C, N) volume (a softmax over the stitched
    logits, an fp32 copy for TTA) would add."""
    script = textwrap.dedent(
        """
        import gc, resource, sys, torch
        from monai_unetzoo.inference import SlidingWindowPredictor
        torch.set_num_threads(1)
        torch.manual_seed(0)
        C, S = 16, (96, 96, 96)
        net = torch.nn.Conv3d(1, C, 1).eval()
        x = torch.randn(1, 1, *S)
        p = SlidingWindowPredictor((32, 32, 32), sw_batch_size=1, overlap=0.0, mode="constant", tta_axes=(0,))
        p(x[..., :32, :32, :32], net)  # warm-up: allocator, weight maps, oneDNN primitives
        gc.collect()
        def status_kib(field):
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith(field))
        # Reset the peak-RSS counter (VmHWM) so that transient peaks from imports/warm-up do not count.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = status_kib("VmRSS:") * 1024
        out = p(x, net)
        peak = max(status_kib("VmHWM:") * 1024, base)
        print(base, peak, out.numel() * 4)
        """
    )
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("needs /proc/self/statm (Linux)")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert res.returncode == 0, res.stderr
    base, peak, acc_bytes = map(int, res.stdout.split())
    n = 96**3
    growth = peak - base
    # accumulator (C*N*4) + count map (N*4) + slack for windows (32^3 * 16 classes * 4 B = 2 MiB each) and allocator
    budget = acc_bytes + 4 * n + 48 * 2**20
    print(f"peak RSS growth {growth / 2**20:.1f} MiB, accumulator {acc_bytes / 2**20:.1f} MiB")
    assert growth < budget, f"peak grew by {growth / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB"
    assert growth > acc_bytes * 0.9  # sanity: the measurement sees the accumulator itself


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_channels_last_network_changes_layout_not_values(spatial_dims):
    """Every conv weight becomes channels-last (2D: channels_last, 3D: channels_last_3d), the module is the same object,
    and its output is the same as before (fp32, tolerance of a different summation order)."""
    from monai_unetzoo.networks import ResUNet

    torch.manual_seed(0)
    net = ResUNet(spatial_dims, 1, 3, features=(4, 8)).eval()
    x = torch.randn(1, 1, *([16] * spatial_dims))
    with torch.no_grad():
        before = net(x)
    fmt = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
    assert channels_last_network(net) is net
    weights = [p for p in net.parameters() if p.dim() == spatial_dims + 2]
    assert weights and all(p.is_contiguous(memory_format=fmt) for p in weights)
    assert any(not p.is_contiguous() for p in weights)  # really changed (not only ambiguous 1-channel weights)
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, atol=1e-5, rtol=1e-5)


def test_predictor_warns_once_about_channels_first_weights():
    """Channels-last windows with channels-first conv weights: one warning naming the fix; none once the network is
    channels-last or when the predictor runs channels-first windows."""
    x = torch.randn(1, 1, 24, 24, 24)
    net = tiny_unet()
    predictor = SlidingWindowPredictor(ROI)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor(x, net)
        predictor(x, net)
    messages = [str(w.message) for w in caught if "channels-first" in str(w.message)]
    assert len(messages) == 1 and "channels_last_network" in messages[0]
    for quiet_predictor, quiet_net in [
        (SlidingWindowPredictor(ROI), channels_last_network(tiny_unet())),
        (SlidingWindowPredictor(ROI, channels_last=False), tiny_unet()),
    ]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quiet_predictor(x, quiet_net)
        assert not [w for w in caught if "channels-first" in str(w.message)]
