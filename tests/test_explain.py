"""neuroprint.explain: cross-checks with captum, batched == one-at-a-time, receptive fields vs gradients.

The peer checks run a random-init timm resnet18 with zero_init_last=False (residual branches live) on
64x64 inputs; every comparison is to 1e-6. Gradient checks and batched-vs-single checks run in float64:
in fp32 a batch of another size may round a pre-activation differently, and when that flips a ReLU or
max-pool gate the gradient moves by far more than an ulp (4e-3 of 0.1 measured on 48x48 inputs, for
plain torch autograd with batch 1 vs 2). float64 keeps the comparisons about the algorithms.
"""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neuroprint.explain import (
    ActivationMap,
    ExplainError,
    GuidedBackprop,
    Occlusion,
    Saliency,
    SmoothGrad,
    Unit,
    empirical_field,
    receptive_field,
    receptive_fields,
    smoothgrad_noise,
    window_starts,
)

timm = pytest.importorskip("timm")
captum_attr = pytest.importorskip("captum.attr")

ATOL = 1e-6


@pytest.fixture(scope="module")
def resnet():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = timm.create_model("resnet18", zero_init_last=False).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


@pytest.fixture(scope="module")
def resnet64(resnet):
    """float64 copy for gradient checks (see the module docstring)."""
    return copy.deepcopy(resnet).double()


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 64, 64, generator=g)


@pytest.fixture(scope="module")
def images64(images):
    return images.double()


@pytest.fixture(autouse=True)
def _quiet_captum():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="captum")
        yield


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> None:
    """Equal to ``atol`` in units of max(1, max |b|)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a - b).abs().max().item()
    scale = max(1.0, b.abs().max().item())
    assert err <= atol * scale, f"max abs difference {err} (scale {scale})"


def _layer_fn(model: nn.Module, module: nn.Module, reduce: str | None):
    """forward_func for captum: the model's output at ``module`` (hooked by hand, not by neuroprint)."""

    def run(x: torch.Tensor) -> torch.Tensor:
        store = []
        handle = module.register_forward_hook(lambda _m, _i, o: store.append(o))
        try:
            model(x)
        finally:
            handle.remove()
        out = store[0]
        if reduce == "mean":
            return out.mean((2, 3))
        if reduce == "max":
            return out.amax((2, 3))
        return out

    return run


# ---------------------------------------------------------------------------------------------------
# Cross-checks with captum


def test_saliency_equals_captum_saliency_on_logits(resnet64, images64):
    ours = Saliency(resnet64, "fc").attribute(images64, [3, 999])
    ref = torch.stack(
        [captum_attr.Saliency(resnet64).attribute(images64, target=c, abs=False) for c in (3, 999)], 1
    )
    assert ref.abs().max() > 1e-4  # the comparison is not between zeros
    _close(ours, ref)


def test_neuron_and_channel_units_equal_captum_neuron_gradient(resnet64, images64):
    block = resnet64.layer2[0]
    units = [Unit(5, (1, 2)), Unit(9, (0, 7)), Unit(11), Unit(4, reduce="max")]
    ours = Saliency(resnet64, "layer2.0").attribute(images64, units)
    ng = captum_attr.NeuronGradient(resnet64, block)
    ref = torch.stack(
        [
            ng.attribute(images64, neuron_selector=(5, 1, 2)),
            ng.attribute(images64, neuron_selector=(9, 0, 7)),
            ng.attribute(images64, neuron_selector=lambda out: out[:, 11].mean((1, 2))),
            ng.attribute(images64, neuron_selector=lambda out: out[:, 4].amax((1, 2))),
        ],
        1,
    )
    assert ref.abs().max() > 1e-4
    _close(ours, ref)


def test_guided_backprop_equals_captum_on_logits(resnet64, images64):
    ours = GuidedBackprop(resnet64, "fc").attribute(images64, [7, 420])
    ref = torch.stack(
        [captum_attr.GuidedBackprop(resnet64).attribute(images64, target=c) for c in (7, 420)], 1
    )
    plain = Saliency(resnet64, "fc").attribute(images64, [7, 420])
    assert (ours - plain).abs().max() > 1e-4  # the guided rule changed something
    _close(ours, ref)


def test_smoothgrad_equals_captum_noise_tunnel_with_the_same_noise(resnet64, images64):
    n_samples, stdev = 2, 0.25
    torch.manual_seed(123)
    ref = torch.stack(
        [
            captum_attr.NoiseTunnel(captum_attr.Saliency(resnet64)).attribute(
                images64, nt_type="smoothgrad", nt_samples=n_samples, stdevs=stdev, target=c, abs=False
            )
            for c in (11,)
        ],
        1,
    )
    # captum draws torch.normal(0, stdev) over the image-major repeated batch from the global RNG.
    torch.manual_seed(123)
    noise = torch.normal(0, torch.tensor(stdev).repeat((2 * n_samples, 3, 64, 64)))
    ours = SmoothGrad(resnet64, "fc").attribute(images64, [11], noise=noise.reshape(2, n_samples, 3, 64, 64))
    _close(ours, ref)
    assert (ours - Saliency(resnet64, "fc").attribute(images64, [11])).abs().max() > 1e-4


@pytest.mark.parametrize("statistic", ["mean", "max"])
def test_occlusion_equals_captum_occlusion(resnet, images, statistic):
    units = [1, 60]
    ours = Occlusion(resnet, "layer2", max_rows=50).attribute(
        images, units, window=(12, 10), stride=(9, 8), baseline=0.25, statistic=statistic
    )
    occ = captum_attr.Occlusion(_layer_fn(resnet, resnet.layer2, statistic))
    window = {"sliding_window_shapes": (3, 12, 10), "strides": (3, 9, 8), "baselines": 0.25}
    ref = torch.stack(
        [occ.attribute(images, target=c, perturbations_per_eval=56, **window) for c in units], 1
    )
    # captum repeats the map over the 3 colour channels (its window spans all of them)
    assert torch.equal(ref[:, :, 0], ref[:, :, 2])
    assert ref.abs().max() > 1e-4
    _close(ours.maps, ref[:, :, 0])
    assert ours.grid.shape == (2, 2, 7, 8)  # the last windows are cut by the edge: 54 + 12 > 64, 56 + 10 > 64


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "nearest"])
def test_activation_map_equals_layer_activation_plus_interpolate(resnet, images, mode):
    ours = ActivationMap(resnet, "layer3").attribute(images, [0, 4, 200], mode=mode)
    acts = captum_attr.LayerActivation(resnet, resnet.layer3).attribute(images)
    ref = F.interpolate(acts[:, [0, 4, 200]], size=(64, 64), mode=mode)
    _close(ours, ref)


def test_activation_map_threshold_keeps_the_top_quantile(resnet, images):
    maps = ActivationMap(resnet, "layer3").attribute(images, [0, 4], threshold=0.75)
    raw = ActivationMap(resnet, "layer3").attribute(images, [0, 4])
    for n in range(2):
        for k in range(2):
            q = torch.quantile(raw[n, k].flatten().double(), 0.75).float()
            kept = raw[n, k] >= q
            assert torch.equal(maps[n, k][kept], raw[n, k][kept])
            assert torch.all(maps[n, k][~kept] == 0)
            assert 0.2 < kept.float().mean() < 0.3


# ---------------------------------------------------------------------------------------------------
# Batched equals one at a time


@pytest.mark.parametrize("backward", ["shared", "copies"])
@pytest.mark.parametrize("max_rows", [2, 4, 64])
def test_saliency_and_guided_batched_equal_one_at_a_time(resnet64, images, backward, max_rows):
    images64 = images.double()
    units = [Unit(3), Unit(17, (2, 3)), Unit(40, reduce="sum")]
    for cls in (Saliency, GuidedBackprop):
        # max_rows 2: units split across backwards; 4: one input per forward; 64: both inputs at once
        batched = cls(resnet64, "layer2", max_rows=max_rows, backward=backward).attribute(images64, units)
        for n in range(2):
            for k, u in enumerate(units):
                single = cls(resnet64, "layer2", backward="copies").attribute(images64[n : n + 1], [u])
                _close(batched[n, k], single[0, 0])


def test_smoothgrad_backward_strategies_agree(resnet64, images):
    images64 = images.double()
    shared = SmoothGrad(resnet64, "layer3", max_rows=3, backward="shared")
    copies = SmoothGrad(resnet64, "layer3", max_rows=3, backward="copies")
    a = shared.attribute(images64, [1, 5, 7], n_samples=2, seed=3)
    _close(a, copies.attribute(images64, [1, 5, 7], n_samples=2, seed=3))
    assert a.shape == (2, 3, 3, 64, 64)
    with pytest.raises(ExplainError, match="unknown backward"):
        Saliency(resnet64, "layer3", backward="vmap")


def test_smoothgrad_batched_equals_one_at_a_time_and_is_seeded(resnet64, images):
    images64 = images.double()
    sg = SmoothGrad(resnet64, "layer3", guided=True, max_rows=5)
    noise = smoothgrad_noise(images64, 3, 0.2, seed=7)
    assert noise.shape == (2, 3, 3, 64, 64)
    span = images64[0].max() - images64[0].min()
    assert abs(noise[0].std().item() / (0.2 * span.item()) - 1) < 0.05  # level is a fraction of the range
    batched = sg.attribute(images64, [2, 9], n_samples=3, noise_level=0.2, seed=7)
    _close(batched, sg.attribute(images64, [2, 9], noise=noise))
    for n in range(2):
        for k, u in enumerate([2, 9]):
            single = SmoothGrad(resnet64, "layer3", guided=True).attribute(
                images64[n : n + 1], [u], noise=noise[n : n + 1]
            )
            _close(batched[n, k], single[0, 0])
    other = sg.attribute(images64, [2, 9], n_samples=3, noise_level=0.2, seed=8)
    assert (other - batched).abs().max() > 1e-6


def test_occlusion_batched_equals_one_at_a_time(resnet64, images):
    images64 = images.double()
    every = Occlusion(resnet64, "layer3", max_rows=7).attribute(
        images64, window=16, stride=12, statistic="max"
    )
    assert every.maps.shape == (2, 256, 64, 64)  # every channel from the same forwards
    for n in range(2):
        for c in (0, 255):
            one = Occlusion(resnet64, "layer3", max_rows=64).attribute(
                images64[n : n + 1], [c], window=16, stride=12, statistic="max"
            )
            _close(every.maps[n, c], one.maps[0, 0])
            _close(every.grid[n, c], one.grid[0, 0])


def test_activation_map_batched_equals_one_at_a_time(resnet64, images):
    images64 = images.double()
    batched = ActivationMap(resnet64, "layer2").attribute(images64, [1, 2], threshold=0.5)
    for n in range(2):
        for k, c in enumerate([1, 2]):
            _close(
                batched[n, k],
                ActivationMap(resnet64, "layer2").attribute(images64[n], [c], threshold=0.5)[0, 0],
            )


# ---------------------------------------------------------------------------------------------------
# Units, layers and the guided rule


def test_weights_units_equal_channel_and_neuron_units(resnet, images):
    mask = torch.zeros(128, 8, 8, dtype=torch.bool)
    mask[13] = True
    onehot = torch.zeros(128, 8, 8)
    onehot[20, 3, 5] = 1.0
    sal = Saliency(resnet, "layer2")
    got = sal.attribute(images, [Unit.mask(mask), Unit(weights=onehot)])
    want = sal.attribute(images, [Unit(13), Unit(20, (3, 5))])
    _close(got, want)


def test_token_units_on_an_extractor_tap():
    from neuroprint.extractors import create_extractor

    ex = create_extractor("timm:test_vit", weights="random", layers=["blocks.0"])
    x = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(2))
    sal = Saliency(ex, "blocks.0")
    shape = sal.layer_shape(x)
    assert (shape.layout, shape.prefix, shape.grid) == ("nlc", 1, (10, 10))
    # token 1 + 2*10 + 3 is grid position (2, 3); "@23" pools that token over channels
    got = sal.attribute(x, [Unit(5, (2, 3)), Unit(5, 24), Unit.parse("@24", reduce="sum")])
    _close(got[0, 0], got[0, 1])
    xin = x.clone().requires_grad_(True)
    tokens = ex(xin)["blocks.0"]
    (grad,) = torch.autograd.grad(tokens[0, 24].sum(), xin)
    _close(got[0, 2], grad[0])
    maps = ActivationMap(ex, "blocks.0").attribute(x, [5], mode="nearest", size=(10, 10))
    _close(maps[0, 0], tokens.detach()[0, 1:, 5].reshape(10, 10))


def test_registered_extractor_tap_equals_its_module_path():
    from neuroprint.extractors import create_extractor

    ex = create_extractor("vgg16", weights="random", layers=["relu_1_2"])
    x = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(6))
    units = [
        Unit(3, (5, 7)),
        Unit(9),
        Unit(weights=torch.rand(64, 24, 24, generator=torch.Generator().manual_seed(7))),
    ]
    by_tap = Saliency(ex, "relu_1_2")  # the extractor's [B, H*W, C] output
    assert by_tap.layer_shape(x).layout == "nlc" and by_tap.layer_shape(x).grid == (24, 24)
    by_path = Saliency(ex, "features.3")  # the ReLU module inside the extractor's network
    assert by_path.layer_shape(x).layout == "nchw"
    _close(by_tap.attribute(x, units), by_path.attribute(x, units))
    with pytest.raises(ExplainError, match="create it with layers"):
        Saliency(ex, "relu_3_3")
    _close(
        ActivationMap(ex, "relu_1_2").attribute(x, [3, 9], mode="nearest"),
        ActivationMap(ex, "features.3").attribute(x, [3, 9], mode="nearest"),
    )


class _FunctionalReLUNet(nn.Module):
    """ReLUs as a function, an in-place module and a Tensor method, one of them inside the target block."""

    def __init__(self, modules: bool):
        super().__init__()
        g = torch.Generator().manual_seed(4)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 6, 1))
        self.modules_ = modules
        self.act = nn.ReLU()
        for p in self.parameters():
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        x = self.conv1(x)
        x = self.act(x) if self.modules_ else F.relu(x)
        y = self.block(x)
        return self.act(y) if self.modules_ else y.relu()


def test_guided_rule_catches_functional_and_inplace_relus():
    functional = _FunctionalReLUNet(modules=False).eval()
    modular = _FunctionalReLUNet(modules=True).eval()
    modular.load_state_dict(functional.state_dict())
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(5))
    ours = GuidedBackprop(functional, "").attribute(x, [Unit(2, (4, 4)), Unit(5, (7, 1))])
    gbp = captum_attr.GuidedBackprop(modular)  # captum hooks ReLU modules only
    ref = torch.stack([gbp.attribute(x, target=(2, 4, 4)), gbp.attribute(x, target=(5, 7, 1))], 1)
    assert ref.abs().max() > 1e-4
    _close(ours, ref)
    # on the functional net captum's module hooks find nothing to rectify but the in-place block ReLU
    assert (
        captum_attr.GuidedBackprop(functional).attribute(x, target=(2, 4, 4)) - ref[:, 0]
    ).abs().max() > 1e-6
    # ReLUs inside the target block are rectified too: compare with plain gradients
    inside = GuidedBackprop(modular, "block").attribute(x, [Unit(1, (3, 3))])
    plain = Saliency(modular, "block").attribute(x, [Unit(1, (3, 3))])
    assert (inside - plain).abs().max() > 1e-6
    assert torch.equal(functional(x), modular(x))  # guided mode left the forward alone


def test_layer_and_unit_errors(resnet, images):
    with pytest.raises(ExplainError, match="no layer 'layer9'"):
        Saliency(resnet, "layer9")
    with pytest.raises(ExplainError, match="out of range"):
        Saliency(resnet, "layer2").attribute(images, [128])
    with pytest.raises(ExplainError, match="outside"):
        Saliency(resnet, "layer2").attribute(images, [Unit(1, (8, 0))])
    with pytest.raises(ExplainError, match="cannot read unit"):
        Unit.parse("x1")
    with pytest.raises(ExplainError, match="weights of shape"):
        Saliency(resnet, "layer2").attribute(images, [Unit(weights=torch.ones(3, 3))])
    with pytest.raises(ExplainError, match="larger than"):
        Occlusion(resnet, "layer2").attribute(images, window=65)
    assert Unit.parse("12@3,4").position == (3, 4) and Unit.parse("7").channel == 7
    assert Unit.parse("@5").channel is None and Unit.parse("@5").position == 5


def test_window_rule_is_captums():
    assert window_starts(64, 12, 5) == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55]  # last cut by the edge
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(10, 10, 3) == [0]


# ---------------------------------------------------------------------------------------------------
# Receptive fields


def _footprint_copy(model: nn.Module) -> nn.Module:
    """Same geometry, every path live: ReLUs removed, max pools as average pools, weights positive."""
    m = copy.deepcopy(model).double().eval()
    for mod in list(m.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, (nn.ReLU, nn.Dropout)):
                setattr(mod, name, nn.Identity())
            elif isinstance(child, nn.MaxPool2d):
                setattr(mod, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.constant_(mod.weight, 1.0 / mod.weight[0].numel())
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
        elif isinstance(mod, nn.BatchNorm2d):
            mod.reset_running_stats()
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)
    return m


class _Stop(Exception):
    pass


def _footprint(model: nn.Module, layer: str, size: int, y: int | None, x: int | None):
    """Bounding box of the nonzero input gradient of channel 0 at (y, x) (None: the centre)."""
    xin = torch.ones(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    store = []

    def stop(_m, _i, out):
        store.append(out)
        raise _Stop

    handle = model.get_submodule(layer).register_forward_hook(stop)
    try:
        model(xin)
    except _Stop:
        pass
    finally:
        handle.remove()
    out = store[0]
    h, w = out.shape[-2:]
    y = h // 2 if y is None else (h - 1 if y < 0 else y)
    x = w // 2 if x is None else (w - 1 if x < 0 else x)
    out[0, 0, y, x].backward()
    hit = xin.grad[0].abs().sum(0) > 0
    ys, xs = torch.nonzero(hit.any(1)).flatten(), torch.nonzero(hit.any(0)).flatten()
    return (y, x), ((int(ys[0]), int(ys[-1]) + 1), (int(xs[0]), int(xs[-1]) + 1))


def _alexnet() -> nn.Module:
    tv = pytest.importorskip("torchvision")
    return tv.models.alexnet()


def _vgg11() -> nn.Module:
    pytest.importorskip("torchvision")
    from torchvision.models.vgg import cfgs, make_layers

    return make_layers(cfgs["A"])  # torchvision's VGG11 convolutional part (the classifier is global)


@pytest.mark.parametrize(
    "arch, layers, size",
    [
        ("alexnet", ["features.2", "features.5", "features.12"], 160),
        ("vgg11", ["3", "10", "15"], 96),
        ("resnet18", ["maxpool", "layer1", "layer2.0", "layer2.1.conv1", "layer3"], 112),
    ],
)
def test_theoretical_rf_equals_gradient_footprint(arch, layers, size):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if arch == "alexnet":
            model = _alexnet()
        elif arch == "vgg11":
            model = _vgg11()
        else:
            model = timm.create_model("resnet18", zero_init_last=False)
    table = receptive_fields(model)
    probe = _footprint_copy(model)
    for layer in layers:
        rf = table[layer]
        assert rf == receptive_field(model, layer)
        for y, x in ((None, None), (0, 0), (-1, -1)):
            (uy, ux), box = _footprint(probe, layer, size, y, x)
            assert rf.region(uy, ux, (size, size)) == box, (arch, layer, (uy, ux))


def test_rf_of_known_layers_and_global_layers(resnet):
    vgg = _vgg11()
    rf = receptive_field(vgg, "0")
    assert (rf.size, rf.stride, rf.start) == ((3, 3), (1, 1), (0.0, 0.0))
    assert rf.region(0, 0) == ((-1, 2), (-1, 2))
    assert receptive_field(resnet, "layer4").stride == (32, 32)
    assert receptive_field(resnet, "global_pool").is_global
    assert receptive_field(resnet, "fc").region(0, 0, (64, 64)) == ((0, 64), (0, 64))
    table = receptive_fields(resnet)
    assert table.region("layer1", 3, 5) == table["layer1"].region(3, 5)
    assert list(table).index("layer1") < list(table).index("layer2") < list(table).index("fc")
    with pytest.raises(ExplainError, match="no receptive field"):
        receptive_field(resnet, "layer9")

    class Upsampler(nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=2)

    with pytest.raises(ExplainError, match="no spatial rule"):
        receptive_fields(Upsampler())


def test_rf_of_registered_extractor_taps():
    from neuroprint.extractors import create_extractor

    ex = create_extractor("vgg16", weights="random", layers=["relu_1_1", "relu_3_2"])
    assert receptive_field(ex, "relu_1_1").size == (3, 3)
    rf = receptive_field(ex, "relu_3_2")
    assert (rf.size, rf.stride) == ((32, 32), (4, 4))  # 3x3 convs: 5, 6, pool ->x2, 10, 14, 16, pool, 24, 32


def test_rf_of_a_vit_patch_projection_then_global_tokens():
    from neuroprint.extractors import create_extractor

    ex = create_extractor("mugs_vit_base", weights="random")
    first, last = list(ex.layers)[0], list(ex.layers)[-1]
    proj = receptive_field(ex, "net.patch_embed.proj")
    patch = ex.backbone.net.patch_embed.proj.kernel_size
    assert (proj.size, proj.stride) == (tuple(patch), tuple(patch))
    assert receptive_field(ex, first).is_global and receptive_field(ex, last).is_global


def test_empirical_field_finds_the_common_region():
    maps = torch.zeros(4, 32, 32)
    g = torch.Generator().manual_seed(3)
    for n in range(4):
        maps[n, 10:20, 5:12] = 1 + torch.rand(10, 7, generator=g)
        maps[n, torch.randint(0, 32, (1,), generator=g), 25] = 0.3  # stray pixels below threshold
    field = empirical_field(maps, threshold=0.5)
    assert field.region == ((10, 20), (5, 12))
    assert field.area == 70
    with pytest.raises(ExplainError):
        empirical_field(maps[0])


# ---------------------------------------------------------------------------------------------------
# Command line (driven through the sub-parsers the main CLI mounts)


def _cli(argv: list[str]) -> int:
    import argparse

    from neuroprint.cli.explain import add_parser, add_rf_parser, run, run_rf

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    add_rf_parser(sub)
    args = parser.parse_args(argv)
    return (run if args.command == "explain" else run_rf)(args)


@pytest.mark.parametrize("method, fmt", [("guided", "npz"), ("occlusion", "parquet"), ("actmap", "npz")])
def test_cli_explain_writes_maps_overlays_and_index(image_sets, tmp_path, method, fmt):
    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    from neuroprint.extractors import create_extractor

    out = tmp_path / method
    units = ["3", "5-6"] + (["7@4,4"] if method != "actmap" else [])
    argv = ["explain", str(image_sets["list"]), "--extractor", "timm:test_resnet", "--weights", "random"]
    argv += ["--layer", "layer2", "--method", method, "--format", fmt, "--out-dir", str(out), "-q"]
    argv += ["--window", "40", "--stride", "40", "--png-units", "2", "--units", *units]
    assert _cli(argv) == 0
    table = pq.read_table(out / "index.parquet").to_pylist()
    ok = [r for r in table if r["status"] == "ok"]
    failed = [r for r in table if r["status"] == "failed"]
    assert len(failed) == 2 and all(r["error"] for r in failed)  # the missing file and the folder
    n_units = 4 if method != "actmap" else 3  # "5-6" is two channels
    assert len(ok) == 2 * n_units
    settings = json.loads((out / "explain.json").read_text())
    assert settings["method"] == method and settings["images"] == 2 and settings["failed"] == 2
    assert settings["units"][:3] == ["3:mean", "5:mean", "6:mean"]
    # the stored map is what the library computes for that image
    ex = create_extractor("timm:test_resnet", weights="random")
    from neuroprint.io.decode import decode_image, preprocess

    first = ok[0]
    x = preprocess(decode_image(first["uri"]), ex.recipe)[None]
    if method == "guided":
        want = GuidedBackprop(ex, "layer2").attribute(x, [3])[0, 0].abs().amax(0)
    elif method == "occlusion":
        want = Occlusion(ex, "layer2").attribute(x, [3], window=40, stride=40).maps[0, 0]
    else:
        want = ActivationMap(ex, "layer2").attribute(x, [3])[0, 0]
    if fmt == "npz":
        with np.load(out / first["file"]) as z:
            got = torch.from_numpy(z["maps"][0])
            assert list(z["units"][:1]) == ["3:mean"]
    else:
        got = torch.tensor(first["map"]).reshape(first["map_shape"])
    _close(got, want)
    pngs = sorted((out / "overlays").glob("*.png"))
    assert len(pngs) == 2 * 2  # --png-units 2 for each image
    assert Image.open(pngs[0]).size == (160, 160)


def test_cli_rf_prints_the_table_and_a_region(capsys):
    assert _cli(["rf", "--extractor", "timm:resnet18", "--layer", "layer2", "--unit", "1,2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["layer2"]["size"] == [99, 99] and out["layer2"]["stride"] == [8, 8]
    assert out["layer2"]["region"]["y"] == [-41, 58]  # centre 8, half-width 49
    assert _cli(["rf", "--extractor", "timm:resnet18"]) == 0
    text = capsys.readouterr().out
    assert "layer4" in text and "global" in text


def test_cli_rf_empirical_field_lies_in_the_theoretical_one(image_sets, tmp_path, capsys):
    from PIL import Image

    heat = tmp_path / "field.png"
    argv = ["rf", "--extractor", "timm:test_resnet", "--weights", "random", "--layer", "layer1"]
    argv += ["--unit", "10,12", "--empirical", str(image_sets["list"]), "--window", "8", "--stride", "8"]
    argv += ["--map", str(heat), "--json", "-q"]
    assert _cli(argv) == 0
    out = json.loads(capsys.readouterr().out)["layer1"]
    emp = out["empirical"]
    assert emp["images"] == 2 and emp["failed"] == 2  # the list's missing file and folder
    h, w = emp["input_size"]
    assert emp["area"] > 0 and Image.open(heat).size == (w, h)
    # Occlusion reaches the unit only through its theoretical field; a window spreads its discrepancy
    # over its own pixels, so the empirical box may exceed the field by window - 1 on each side.
    (ty0, ty1), (tx0, tx1) = out["region"]["y"], out["region"]["x"]
    (ey0, ey1), (ex0, ex1) = emp["y"], emp["x"]
    assert ty0 - 7 <= ey0 < ey1 <= ty1 + 7 and tx0 - 7 <= ex0 < ex1 <= tx1 + 7
    assert (ey1 - ey0) < h or (ex1 - ex0) < w  # a local field, not the whole image
    # one channel, table output
    argv = [a for a in argv if a != "--json"] + ["--channel", "3"]
    assert _cli(argv) == 0
    text = capsys.readouterr().out
    assert "empirical field over 2 images (1 unit(s)" in text and "2 image(s) unreadable" in text
    with pytest.raises(ValueError, match="outside"):
        _cli(argv[:-1] + ["999"])
    with pytest.raises(ValueError, match="needs --layer and --unit"):
        _cli(["rf", "--extractor", "timm:test_resnet", "--empirical", str(image_sets["list"])])


# ---------------------------------------------------------------------------------------------------
# Minimal and masked images


def _live_neuron(model: nn.Module, x: torch.Tensor) -> Unit:
    """The layer3 channel most active at grid position (2, 2): a unit with something to keep."""
    with torch.no_grad():
        acts = Saliency(model, "layer3").layer_acts(x[None])  # [1, C, P]
    grid = Saliency(model, "layer3").layer_shape(x[None]).grid
    return Unit(int(acts[0, :, 2 * grid[1] + 2].argmax()), (2, 2))


def _value(model: nn.Module, image: torch.Tensor, unit: Unit) -> float:
    store = []
    handle = model.layer3.register_forward_hook(lambda _m, _i, o: store.append(o))
    with torch.no_grad():
        model(image[None])
    handle.remove()
    return float(store[0][0, unit.channel, unit.position[0], unit.position[1]])


@pytest.mark.parametrize("method, params", [("slic", {"n_segments": 24}), ("felzenszwalb", {"min_size": 30})])
def test_minimal_parcel_image(resnet, images, method, params):
    pytest.importorskip("skimage")
    from neuroprint.explain import MinimalImages

    x = images[0]
    unit = _live_neuron(resnet, x)
    res = MinimalImages(resnet, "layer3", max_rows=16).parcels(x, unit, method=method, keep=0.9, **params)
    n = len(res.order)
    assert n >= 2 and sorted(res.order) == list(range(n))
    assert set(np.unique(res.labels)) == set(range(n))  # the parcels tile the image
    assert res.full_value == pytest.approx(_value(resnet, x, unit), abs=1e-5)
    # parts are ranked by their own value; the union of all parcels is the image
    assert torch.all(res.part_values[res.order][:-1] >= res.part_values[res.order][1:])
    assert res.cumulative_values[-1].item() == pytest.approx(res.full_value, abs=1e-5)
    # batched unions equal one-at-a-time forwards of the same unions
    for m in (1, n // 2, n):
        mask = torch.from_numpy(np.isin(res.labels, res.order[:m])).to(x.dtype)
        assert res.cumulative_values[m - 1].item() == pytest.approx(_value(resnet, x * mask, unit), abs=1e-5)
    assert res.best == int(res.cumulative_values.argmax()) + 1
    assert res.smallest is not None  # the full union keeps 100%
    assert res.cumulative_values[res.smallest - 1] >= 0.9 * res.full_value
    assert torch.all(res.cumulative_values[: res.smallest - 1] < 0.9 * res.full_value)
    assert torch.equal(res.image, x * res.mask.to(x.dtype))


@pytest.mark.filterwarnings("ignore::UserWarning")  # FastICA on noise images warns that it did not converge
@pytest.mark.parametrize("method", ["pca", "ica"])
def test_minimal_component_image(resnet, images, method):
    from neuroprint.explain import MinimalImages, decompose

    if method == "ica":
        pytest.importorskip("sklearn")
    x = images[1]
    mean, comps = decompose(x[:, :16, :16], method, None)
    _close(mean + comps.sum(0), x[:, :16, :16], atol=1e-4)  # every component: the image again
    unit = _live_neuron(resnet, x)
    res = MinimalImages(resnet, "layer3").components(x, unit, method=method, n_components=12, keep=0.5)
    assert len(res.order) == 12
    mean, comps = decompose(x, method, 12)
    for m in (1, 12):
        union = mean + comps[res.order[:m]].sum(0)
        assert res.cumulative_values[m - 1].item() == pytest.approx(_value(resnet, union, unit), abs=1e-4)


def test_masked_image_erodes_while_the_unit_keeps_its_fraction(resnet, images):
    pytest.importorskip("scipy")
    from neuroprint.explain import MaskedImages

    x = images[0]
    unit = _live_neuron(resnet, x)
    # a generous importance map: a disc around the unit's receptive-field centre
    rf = receptive_field(resnet, "layer3")
    cy, cx = (rf.start[0] + 2 * rf.stride[0], rf.start[1] + 2 * rf.stride[1])
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    importance = -((yy - cy) ** 2 + (xx - cx) ** 2)
    res = MaskedImages(resnet, "layer3", max_rows=8).attribute(
        x, unit, importance=importance, stdev_size_thr=-1.0, filter_sigma=1.0, fraction=0.5
    )
    assert res.original == pytest.approx(_value(resnet, x, unit), abs=1e-5)
    assert res.kept
    assert res.values[res.steps] >= 0.5 * res.original
    if res.steps + 1 < len(res.values):
        assert res.values[res.steps + 1] < 0.5 * res.original  # the next erosion would lose it
    assert res.values[res.steps].item() == pytest.approx(_value(resnet, res.image, unit), abs=1e-5)
    assert 0 < int(res.mask.sum()) < 64 * 64


def test_occlusion_with_gaps_between_windows(resnet, images):
    res = Occlusion(resnet, "layer2").attribute(images[:1], [3], window=8, stride=20)
    assert torch.isfinite(res.maps).all()
    assert torch.all(res.maps[0, 0, 8:20, :] == 0)  # rows no window covers
    _close(res.maps[0, 0, :8, :8], res.grid[0, 0, 0, 0].expand(8, 8))


def test_occlusion_restricted_to_the_receptive_field_is_exact(resnet64, images64):
    """Windows that miss a neuron's theoretical field cannot move it: skipping them changes nothing."""
    rf = receptive_field(resnet64, "layer1")
    units = [Unit(channel=c, position=(3, 9)) for c in (0, 5, 17)]
    box = rf.region(3, 9, (64, 64))
    assert box[0][1] - box[0][0] < 64 or box[1][1] - box[1][0] < 64  # a local field at 64 px
    occ = Occlusion(resnet64, "layer1", max_rows=16)
    full = occ.attribute(images64, units, window=6, stride=3)
    fast = occ.attribute(images64, units, window=6, stride=3, region=box)
    torch.testing.assert_close(fast.grid, full.grid, atol=1e-12, rtol=0)
    torch.testing.assert_close(fast.maps, full.maps, atol=1e-12, rtol=0)
    assert (full.grid != 0).any() and (full.grid == 0).any()  # some windows reach it, some do not
    # region="field" finds the same box from the units themselves (several neurons: the union)
    assert occ._field_region(units, (64, 64)) == box
    traced = occ.attribute(images64, units, window=6, stride=3, region="field")
    torch.testing.assert_close(traced.grid, full.grid, atol=1e-12, rtol=0)
    two = [Unit(channel=0, position=(3, 9)), Unit(channel=1, position=(0, 0))]
    (y0, y1), (x0, x1) = occ._field_region(two, (64, 64))
    assert (y0, x0) == (0, 0) and (y1, x1) == box[0][1:] + box[1][1:]
    assert occ._field_region([Unit(channel=0)], (64, 64)) is None  # pooled over positions: every window
    with pytest.raises(ExplainError, match="region is"):
        occ.attribute(images64, units, window=6, stride=3, region="rf")


@pytest.mark.parametrize("method", ["minimal", "masked"])
def test_cli_minimal_and_masked_images(image_sets, tmp_path, method):
    import numpy as np
    import pyarrow.parquet as pq

    pytest.importorskip("skimage")
    out = tmp_path / method
    argv = ["explain", str(image_sets["list"]), "--extractor", "timm:test_resnet", "--weights", "random"]
    argv += ["--layer", "layer3", "--method", method, "--out-dir", str(out), "-q", "--units", "1@2,2"]
    argv += ["--n-parts", "12", "--keep", "0.8", "--fraction", "0.5"]
    assert _cli(argv) == 0
    ok = [r for r in pq.read_table(out / "index.parquet").to_pylist() if r["status"] == "ok"]
    assert len(ok) == 2
    from neuroprint.extractors import create_extractor

    ex = create_extractor("timm:test_resnet", weights="random", layers=["layer3"])
    for r in ok:
        with np.load(out / r["file"]) as z:
            assert z["images"].shape == (1, 3, 160, 160) and z["maps"].shape == (1, 160, 160)
            reduced = torch.from_numpy(z["images"])
        with torch.no_grad():
            acts = ex(reduced)["layer3"]  # [1, H*W, C] of the stored image
        grid = int(acts.shape[1] ** 0.5)
        assert r["value"] == pytest.approx(float(acts[0, 2 * grid + 2, 1]), abs=1e-5)
        if method == "minimal":
            assert r["value"] >= 0.8 * r["original"] - 1e-5 * abs(r["original"])
        assert (out / r["png"]).is_file()
    settings = json.loads((out / "explain.json").read_text())
    assert settings["method"] == method
