"""Behaviour of the network zoo: fidelity to the reference design, shapes, gradients, deep supervision, pruning,
export and use from MONAI bundle configs."""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, verify_net_in_out
from monai.losses import DiceCELoss
from monai.networks import eval_mode

from monai_unetzoo.losses import MaskedDeepSupervisionLoss
from monai_unetzoo.networks import NETWORK_REGISTRY, ClassicUNet, ResUNet, UNetPlusPlus, get_network

TINY = (4, 8, 16, 32)  # three poolings: enough to exercise odd sizes at every level
NAMES = ("unet", "unetpp", "resunet")


def tiny(name: str, spatial_dims: int, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return get_network(name, spatial_dims=spatial_dims, in_channels=2, out_channels=3, features=TINY, **kwargs)


def test_classic_unet_parameter_count_matches_reference_design():
    # The figure printed for the original network in the design notes (Ronneberger et al. 2015 as commonly
    # implemented in PyTorch: 1 input channel, 1 class, transposed convolutions, biased convolutions, batch norm).
    net = get_network(
        "unet", spatial_dims=2, in_channels=1, out_channels=1, features=(64, 128, 256, 512, 1024), upsample="deconv",
        bias=True, norm="batch",
    )
    assert sum(p.numel() for p in net.parameters()) == 31_042_369


def test_registry_names_and_classes():
    assert {"unet", "unetpp", "resunet"} <= set(NETWORK_REGISTRY)
    assert isinstance(get_network("UNet++", spatial_dims=2, features=TINY), UNetPlusPlus)
    assert isinstance(get_network("resunet", features=TINY), ResUNet)
    assert isinstance(get_network("unet", features=TINY), ClassicUNet)
    with pytest.raises(KeyError, match="unknown network 'vnet'"):
        get_network("vnet")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("upsample", ["deconv", "nontrainable"])
@pytest.mark.parametrize(
    "shape", [(2, 2, 64, 64), (1, 2, 35, 50), (1, 2, 35, 50, 36), (1, 2, 17, 24, 9)], ids=lambda s: "x".join(map(str, s))
)
def test_output_shape_equals_input_shape_for_any_size(name, upsample, shape):
    net = tiny(name, len(shape) - 2, upsample=upsample)
    with eval_mode(net):
        out = net(torch.randn(*shape))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (shape[0], 3, *shape[2:])


@pytest.mark.parametrize("name", NAMES)
def test_drive_sized_image(name):
    # DRIVE fundus images are 565 (W) x 584 (H): odd at the first pooling.
    net = get_network(name, spatial_dims=2, in_channels=3, out_channels=2, features=(2, 4, 8, 8, 8))
    with eval_mode(net):
        assert net(torch.randn(1, 3, 584, 565)).shape == (1, 2, 584, 565)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_every_parameter_gets_a_gradient(name, spatial_dims):
    kwargs = {"deep_supervision": True} if name == "unetpp" else {}
    net = tiny(name, spatial_dims, **kwargs).train()
    x = torch.randn(2, 2, *([20] * spatial_dims))
    out = net(x)
    outs = out if isinstance(out, list) else [out]
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_unetpp_deep_supervision_heads_count_shape_and_order(spatial_dims):
    # Instance norm and no dropout make train and eval mode compute the same function, so the k-th training head
    # must equal the eval output pruned at level L - k (the documented order: final, deepest head first).
    net = tiny("unetpp", spatial_dims, deep_supervision=True, norm=("instance", {"affine": True}))
    x = torch.randn(2, 2, *([19] * spatial_dims))
    net.train()
    heads = net(x)
    depth = len(TINY) - 1
    assert isinstance(heads, list) and len(heads) == depth
    assert all(h.shape == (2, 3, *x.shape[2:]) for h in heads)
    net.eval()
    for k, head in enumerate(heads):
        net.prune_level = depth - k
        torch.testing.assert_close(net(x), head, rtol=1e-5, atol=1e-5)
    # Heads differ from each other (they are separate sub-networks), so the order check above is not vacuous.
    assert not torch.allclose(heads[0], heads[-1])


def test_unetpp_without_deep_supervision_returns_tensor_in_training():
    net = tiny("unetpp", 2).train()
    assert isinstance(net(torch.randn(2, 2, 16, 16)), torch.Tensor)
    with pytest.raises(ValueError, match="deep_supervision"):
        net.prune_level = 1


@pytest.mark.parametrize("name", ["unet", "resunet"])
def test_encoder_decoder_deep_supervision_heads_are_nnunet_levels(name):
    # TINY has L = 3 poolings: nnU-Net's decoder heads sit on levels 0, 1, 2 with weight 0 on the coarsest (2), so
    # the network returns [level 0, level 1]. Level 1's head must be its 1x1 conv on the decoder output of that
    # level, read independently through a forward hook; the final head must equal the eval-mode output.
    net = tiny(name, 3, deep_supervision=True, norm=("instance", {"affine": True}))
    x = torch.randn(2, 2, 19, 20, 21)
    seen = {}
    net.decoder[-2].register_forward_hook(lambda module, args, out: seen.__setitem__("level1", out))
    heads = net.train()(x)
    assert isinstance(heads, list) and len(heads) == 2 and len(net.aux_heads) == 1
    assert heads[0].shape == (2, 3, 19, 20, 21)
    assert heads[1].shape == (2, 3, 9, 10, 10) == (2, 3, *seen["level1"].shape[2:])
    torch.testing.assert_close(heads[1], net.aux_heads[0](seen["level1"]), rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), heads[0], rtol=1e-5, atol=1e-5)


def test_deep_supervision_trains_every_head_and_keeps_the_plain_checkpoint_layout():
    net = tiny("resunet", 3, deep_supervision=True).train()
    loss = MaskedDeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))
    label = torch.randint(0, 3, (2, 1, 16, 16, 16))
    loss(net(torch.randn(2, 2, 16, 16, 16)), label).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.aux_heads.parameters())
    plain = tiny("resunet", 3)
    missing, unexpected = plain.load_state_dict(net.state_dict(), strict=False)
    assert missing == [] and sorted(unexpected) == ["aux_heads.0.bias", "aux_heads.0.weight"]
    # Too shallow for an active auxiliary level (L = 2: only the zero-weight coarsest one): the final head alone.
    shallow = get_network("resunet", spatial_dims=2, in_channels=1, out_channels=2, features=(4, 8, 16),
                          deep_supervision=True).train()
    assert len(shallow.aux_heads) == 0 and isinstance(shallow(torch.randn(1, 1, 16, 16)), list)


@pytest.mark.parametrize("prune_level", [1, 2, 3])
def test_pruned_unetpp_equals_matching_head_of_full_network_and_skips_deeper_nodes(prune_level):
    net = tiny("unetpp", 2, deep_supervision=True).eval()
    x = torch.randn(1, 2, 33, 30)
    with torch.no_grad():
        full_grid = net._grid(x, net.depth)
        expected = net.heads[str(prune_level)](full_grid[f"0_{prune_level}"])
        called: list[str] = []
        hooks = [m.register_forward_hook(lambda *_ , k=k: called.append(k)) for k, m in net.nodes.items()]
        hooks += [m.register_forward_hook(lambda *_, i=i: called.append(f"{i}_0")) for i, m in enumerate(net.backbone)]
        net.prune_level = prune_level
        out = net(x)
        for h in hooks:
            h.remove()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    computed = {tuple(map(int, k.split("_"))) for k in called}
    assert computed == {(i, j) for i in range(net.depth + 1) for j in range(net.depth + 1) if i + j <= prune_level}


@pytest.mark.parametrize("name", NAMES)
def test_eval_is_deterministic(name):
    net = tiny(name, 3, dropout=0.2).eval()
    x = torch.randn(1, 2, 16, 18, 20)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["unet", "resunet"])
def test_torchscript(name):
    net = tiny(name, 3).eval()
    x = torch.randn(1, 2, 19, 20, 21)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-5, atol=1e-5)


def write_tiny_bundle(tmp_path, name: str, spatial_dims: int = 2):
    """A minimal bundle (metadata + config) around one of our networks, referenced by short name."""
    target = {"unet": "ClassicUNet", "unetpp": "UNetPlusPlus", "resunet": "ResUNet"}[name]
    config = {
        "imports": ["$import monai_unetzoo"],
        "network_def": {
            "_target_": target, "spatial_dims": spatial_dims, "in_channels": 2, "out_channels": 3, "features": TINY,
        },
    }
    shape = {"spatial_shape": [32] * spatial_dims}
    meta = {
        "version": "0.0.1",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "num_channels": 2, **shape,
                                 "dtype": "float32", "value_range": [0, 1], "is_patch_data": True}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 3, **shape,
                                 "dtype": "float32", "value_range": [0, 1], "is_patch_data": True}},
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    return tmp_path / "config.json", tmp_path / "metadata.json"


@pytest.mark.parametrize("name", NAMES)
def test_bundle_export_round_trip(tmp_path, name):
    config_file, meta_file = write_tiny_bundle(tmp_path, name)
    parser = ConfigParser()
    parser.read_config(str(config_file))
    net = parser.get_parsed_content("network_def")
    torch.save(net.state_dict(), tmp_path / "model.pt")
    verify_net_in_out(net_id="network_def", meta_file=str(meta_file), config_file=str(config_file), n=1)
    ts_file = tmp_path / "model.ts"
    # UNet++ builds its node grid from string keys, which TorchScript cannot script: export it by tracing.
    trace = {"use_trace": True, "input_shape": [1, 2, 32, 32]} if name == "unetpp" else {}
    ckpt_export(
        net_id="network_def", filepath=str(ts_file), ckpt_file=str(tmp_path / "model.pt"), meta_file=str(meta_file),
        config_file=str(config_file), **trace,
    )
    exported = torch.jit.load(str(ts_file))
    x = torch.randn(1, 2, 32, 32)
    with eval_mode(net), torch.no_grad():
        torch.testing.assert_close(exported(x), net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "target_form", ["short", "full"],
)
def test_config_resolution_by_short_and_full_name(name, target_form):
    cls = type(get_network(name, features=TINY))
    target = cls.__name__ if target_form == "short" else f"monai_unetzoo.networks.{cls.__name__}"
    parser = ConfigParser(
        {
            "imports": ["$import monai_unetzoo"],
            "net": {"_target_": target, "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "features": TINY},
        }
    )
    net = parser.get_parsed_content("net")
    assert type(net) is cls
    assert net.spatial_dims == 3 and net.features == TINY


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
def test_channels_last_instance_norm_equals_torch_instance_norm(spatial_dims, channels_last):
    """Same outputs, input gradients and state-dict keys as nn.InstanceNormNd(affine=True) in both memory formats,
    with and without autograd (the no-grad channels-last path is group_norm), and the output keeps the input's
    memory format (the reason the module exists)."""
    from monai_unetzoo.networks.blocks import ChannelsLastInstanceNorm

    torch.manual_seed(0)
    reference = (torch.nn.InstanceNorm2d if spatial_dims == 2 else torch.nn.InstanceNorm3d)(6, affine=True)
    with torch.no_grad():
        reference.weight.normal_()
        reference.bias.normal_()
    ours = ChannelsLastInstanceNorm(6)
    ours.load_state_dict(reference.state_dict())  # strict: same keys
    fmt = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
    x = (torch.randn(3, 6, *([7] * spatial_dims)) * 4 + 2).contiguous(
        memory_format=fmt if channels_last else torch.contiguous_format
    )
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_ours = reference(x_ref), ours(x_ours)
    grad = torch.randn_like(y_ref)
    y_ref.backward(grad)
    y_ours.backward(grad)
    torch.testing.assert_close(y_ours, y_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad, atol=1e-4, rtol=1e-5)
    with torch.no_grad():
        y_ours_no_grad = ours(x)
    torch.testing.assert_close(y_ours_no_grad, y_ref.detach(), atol=1e-5, rtol=1e-5)
    if channels_last:
        assert y_ours_no_grad.is_contiguous(memory_format=fmt)


def test_networks_swap_only_instance_norms_without_running_stats():
    """'instance' norms become ChannelsLastInstanceNorm (affine or not); batch norm and instance norm with running
    statistics stay PyTorch's modules."""
    from monai_unetzoo.networks.blocks import ChannelsLastInstanceNorm

    def norm_types(net):
        return {type(m).__name__ for m in net.modules() if "Norm" in type(m).__name__}

    inst = ResUNet(3, 1, 2, features=(4, 8), norm=("instance", {"affine": True}))
    assert norm_types(inst) == {"ChannelsLastInstanceNorm"}
    assert all(m.affine for m in inst.modules() if isinstance(m, ChannelsLastInstanceNorm))
    plain = UNetPlusPlus(2, 1, 2, features=(4, 8, 16), norm="instance")
    assert norm_types(plain) == {"ChannelsLastInstanceNorm"}
    assert not any(m.affine for m in plain.modules() if isinstance(m, ChannelsLastInstanceNorm))
    assert norm_types(ClassicUNet(2, 1, 2, features=(4, 8), norm="batch")) == {"BatchNorm2d"}
    tracked = ClassicUNet(2, 1, 2, features=(4, 8), norm=("instance", {"track_running_stats": True}))
    assert norm_types(tracked) == {"InstanceNorm2d"}
