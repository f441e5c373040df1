"""AutocastForwardInferer: bf16 autocast training forward on CPU (MONAI's trainer autocasts CUDA only)."""

from __future__ import annotations

import pytest
import torch
from monai.engines import SupervisedTrainer

from monai_unetzoo.engines import AutocastForwardInferer
from monai_unetzoo.networks import ClassicUNet, UNetPlusPlus


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return ClassicUNet(spatial_dims=2, in_channels=3, out_channels=2, features=(8, 16, 32), norm="batch")


def test_off_is_the_plain_forward_and_channels_last_changes_no_value():
    net = _net().eval()
    x = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        ref = net(x)
        plain = AutocastForwardInferer(amp=None, channels_last=False)(x, net)
        cl = AutocastForwardInferer(amp=None, channels_last=True)(x, net)
    assert torch.equal(plain, ref)
    assert cl.dtype == torch.float32 and cl.shape == ref.shape
    torch.testing.assert_close(cl, ref, rtol=1e-5, atol=1e-5)


def test_bf16_runs_convolutions_in_bf16_and_returns_fp32():
    net = _net().eval()
    seen: list[torch.dtype] = []
    net.apply(lambda m: m.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
              if isinstance(m, torch.nn.Conv2d) else None)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = net(x)
        seen.clear()
        out = AutocastForwardInferer(amp="bf16")(x, net)
    assert seen and all(d == torch.bfloat16 for d in seen)
    assert out.dtype == torch.float32
    # bf16 keeps 8 significant bits: the logits agree to a few percent of their spread, not bitwise.
    err = (out - ref).abs().max() / ref.abs().max()
    assert 0 < err < 0.05


def test_deep_supervision_outputs_stay_a_list_of_fp32():
    torch.manual_seed(0)
    net = UNetPlusPlus(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 8, 16), deep_supervision=True)
    out = AutocastForwardInferer(amp="bf16")(torch.randn(1, 1, 32, 32), net.train())
    assert isinstance(out, list) and len(out) == 2 and all(o.dtype == torch.float32 for o in out)


def test_fp16_is_refused():
    with pytest.raises(ValueError, match="gradient scaler"):
        AutocastForwardInferer(amp="fp16")


def test_one_bf16_training_step_follows_the_fp32_gradient():
    """Same weights and batch through MONAI's SupervisedTrainer: the bf16 step's update points where fp32's does."""
    x = torch.randn(4, 3, 32, 32)
    y = (torch.rand(4, 1, 32, 32) > 0.7).long()
    updates = []
    for amp in (None, "bf16"):
        net = _net(seed=1)
        before = [p.detach().clone() for p in net.parameters()]
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        trainer = SupervisedTrainer(
            device=torch.device("cpu"), max_epochs=1, train_data_loader=[{"image": x, "label": y}], network=net,
            optimizer=opt, loss_function=lambda p, t: torch.nn.functional.cross_entropy(p, t[:, 0]),
            inferer=AutocastForwardInferer(amp=amp), decollate=False)
        trainer.run()
        assert torch.isfinite(torch.as_tensor(trainer.state.output["loss"]))
        updates.append(torch.cat([(p.detach() - b).flatten() for p, b in zip(net.parameters(), before)]))
    cos = torch.nn.functional.cosine_similarity(updates[0], updates[1], dim=0)
    assert updates[0].abs().max() > 0
    assert cos > 0.98, cos
