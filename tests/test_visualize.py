"""neuroprint.visualize: cross-checks with torch-lucent, batched == one-by-one, bounds, objectives.

torch-lucent is a test peer (``pip install --no-deps torch-lucent`` plus kornia, decorator,
torchvision). Its ``render`` module imports IPython only to display images; when IPython is absent
a stub module stands in. Lucent picks ``cuda:0`` whenever CUDA exists; the Lucent tests patch
``torch.cuda.is_available`` and Lucent's module-level ``device`` to CPU so both sides run on CPU.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from neuroprint import visualize as vis
from neuroprint.visualize import _Run

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def tiny_cnn(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 12, 3, padding=1),
        )
    return net.eval().requires_grad_(False)


@pytest.fixture
def lucent(monkeypatch):
    pytest.importorskip("kornia")
    pytest.importorskip("decorator")
    pytest.importorskip("torchvision")
    try:
        import IPython.display  # noqa: F401
    except ImportError:
        ipy = types.ModuleType("IPython")
        ipy.display = types.ModuleType("IPython.display")
        monkeypatch.setitem(sys.modules, "IPython", ipy)
        monkeypatch.setitem(sys.modules, "IPython.display", ipy.display)
    pytest.importorskip("lucent")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    from lucent.optvis import objectives, param, render, transform
    from lucent.optvis.param import spatial

    monkeypatch.setattr(spatial, "device", torch.device("cpu"))
    monkeypatch.setattr(transform, "device", torch.device("cpu"))
    return types.SimpleNamespace(objectives=objectives, param=param, render=render)


# ---------------------------------------------------------------------------------------------
# Cross-checks with Lucent


@pytest.mark.parametrize("hw", [(32, 32), (24, 17), (15, 20)])
@pytest.mark.parametrize("decorrelate", [True, False])
def test_fft_image_matches_lucent(lucent, hw, decorrelate):
    h, w = hw
    torch.manual_seed(1)
    params, image_f = lucent.param.image(w, h, batch=2, decorrelate=decorrelate, fft=True, sd=0.5)
    ours = vis.FFTParam(2, (h, w), decorrelate=decorrelate, init=params[0].detach())
    with torch.no_grad():
        theirs = image_f()
        mine = ours()
    assert mine.shape == theirs.shape == (2, 3, h, w)
    torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=0)


def test_pixel_image_matches_lucent(lucent):
    torch.manual_seed(2)
    params, image_f = lucent.param.image(20, batch=3, fft=False, decorrelate=True, sd=0.3)
    ours = vis.PixelParam(3, (20, 20), decorrelate=True, init=params[0].detach())
    with torch.no_grad():
        torch.testing.assert_close(ours(), image_f(), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "kind,lr,target", [("fft", 2.0, "channel"), ("pixel", 50.0, "channel"), ("fft", 20.0, "neuron")]
)
def test_sgd_render_matches_lucent_render_vis(lucent, kind, lr, target):
    net, size, steps, unit = tiny_cnn(), 32, 8, 5
    torch.manual_seed(3)
    params, image_f = lucent.param.image(size, fft=kind == "fft", decorrelate=True, sd=0.1)
    init = params[0].detach().clone()
    ours = (vis.FFTParam if kind == "fft" else vis.PixelParam)(1, (size, size), decorrelate=True, init=init)
    res = vis.render(
        net,
        "2",
        [unit],
        objective=getattr(vis, target)("2", [unit]),
        param=ours,
        steps=steps,
        optimizer="sgd",
        lr=lr,
        transforms="none",
        normalize=IMAGENET,
    )
    theirs = lucent.render.render_vis(
        net,
        getattr(lucent.objectives, target)("2", unit),
        param_f=lambda: (params, image_f),
        optimizer=lambda p: torch.optim.SGD(p, lr=lr),
        transforms=[],
        thresholds=(steps,),
        progress=False,
        show_image=False,
        fixed_image_size=size,
    )[-1]
    mine = res.images.permute(0, 2, 3, 1).numpy()
    assert abs(mine - theirs).max() < 1e-4
    # Several steps really moved the image (the comparison is not of two initialisations).
    with torch.no_grad():
        cls = vis.FFTParam if kind == "fft" else vis.PixelParam
        start = cls(1, (size, size), decorrelate=True, init=init)()
    assert (res.images - start).abs().max() > 1e-2
    assert float(res.objective[0]) > float(res.initial[0])


# ---------------------------------------------------------------------------------------------
# Batched K units == K separate runs


def _step0_grads(net, units, kind="fft", transforms="standard", seed=0):
    gens = vis.item_generators(units, seed)
    p = vis.make_param(kind, len(units), (32, 32), gens, seed=seed)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in IMAGENET)
    obj = vis.channel("2", units)
    run = _Run(
        net,
        obj,
        p,
        gens,
        transforms=vis._resolve_transforms(transforms),
        mean=mean,
        std=std,
        background="random",
        reader=vis.LayerReader(net, ["2"]),
    )
    _, loss = run.values(train=True)
    assert loss.shape == (len(units),)
    loss.sum().backward()
    return next(p.parameters()).grad


@pytest.mark.parametrize("kind", ["fft", "pixel", "alpha"])
def test_batched_step0_gradients_equal_separate_runs(kind):
    net, units = tiny_cnn(), [0, 3, 7, 11, 3]
    batched = _step0_grads(net, units, kind)
    # The repeated unit 3 is a second, independently initialised item; one-by-one it keeps its key.
    seen = {}
    for i, u in enumerate(units):
        occ = seen.get(u, 0)
        seen[u] = occ + 1
        alone = _step0_grads(net, [u] * (occ + 1), kind)[occ]
        torch.testing.assert_close(batched[i], alone, atol=1e-6, rtol=1e-5)
    assert batched.abs().sum() > 0


@pytest.mark.parametrize("optimizer", ["adam", "gd"])
def test_batched_render_equals_separate_renders(optimizer):
    net, units = tiny_cnn(), [1, 4, 9]
    kw = dict(param="pixel", size=32, steps=6, optimizer=optimizer, lr=0.05, seed=5)
    if optimizer == "gd":
        kw["param_options"] = {"sigmoid": False}
    batched = vis.render(net, "2", units, **kw)
    chunked = vis.render(net, "2", units, batch_size=2, **kw)
    for i, u in enumerate(units):
        alone = vis.render(net, "2", [u], **kw)
        torch.testing.assert_close(batched.images[i], alone.images[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched.images, chunked.images, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# Behaviour: objective rises, bounds hold


@pytest.mark.parametrize(
    "kind,optimizer", [("fft", "adam"), ("pixel", "gd"), ("fft", "lbfgs"), ("alpha", "adam")]
)
def test_objective_rises_on_every_unit(kind, optimizer):
    net = tiny_cnn()
    lr = {"adam": 0.05, "gd": 0.02, "lbfgs": 0.5}[optimizer]
    res = vis.render(net, "2", param=kind, size=32, steps=16, optimizer=optimizer, lr=lr)
    assert res.units == list(range(16))  # every channel of the layer
    assert res.history.shape == (16, 16)
    assert bool((res.objective > res.initial).all()), (res.initial, res.objective)


@pytest.mark.parametrize("background", vis.BACKGROUNDS)
def test_alpha_stays_in_unit_interval_and_penalty_pulls_its_mean(background):
    net = tiny_cnn()
    common = dict(param="alpha", size=32, steps=12, lr=0.3, background=background, seed=1)
    loose = vis.render(net, "2", [2, 6], alpha_penalty=0.0, **common)
    tight = vis.render(net, "2", [2, 6], alpha_penalty=500.0, alpha_target=0.1, **common)
    for res in (loose, tight):
        assert res.images.shape == (2, 4, 32, 32)
        assert float(res.images.min()) >= 0.0 and float(res.images.max()) <= 1.0
    gap = lambda r: (r.images[:, 3].mean(dim=(1, 2)) - 0.1).abs()  # noqa: E731
    assert bool((gap(tight) < gap(loose)).all())


@pytest.mark.parametrize("optimizer", ["lbfgs", "lbfgs-joint"])
def test_lbfgs_respects_pixel_bounds(optimizer):
    net = tiny_cnn()
    kw = dict(
        param="pixel",
        param_options={"sigmoid": False, "bounds": (0.2, 0.8), "sd": 0.2},
        size=24,
        steps=6,
        optimizer=optimizer,
        lr=1.0,
        transforms="none",
    )
    res = vis.render(net, "2", [0, 5], **kw)
    if optimizer == "lbfgs":  # per-unit problems: a unit's first step is the one it takes alone
        one = vis.render(net, "2", [0, 5], **{**kw, "steps": 1})
        alone = vis.render(net, "2", [0], **{**kw, "steps": 1})
        torch.testing.assert_close(one.images[0], alone.images[0], atol=1e-6, rtol=0)
    img = res.images
    assert float(img.min()) >= 0.2 - 1e-7 and float(img.max()) <= 0.8 + 1e-7
    # The bounds were active: a fair share of pixels sits on them.
    on_bound = ((img - 0.2).abs() < 1e-6) | ((img - 0.8).abs() < 1e-6)
    assert on_bound.float().mean() > 0.05
    assert bool((res.objective > res.initial).all())


@pytest.fixture(scope="module")
def generator():
    return vis.load_generator(None, seed=0)


@pytest.mark.parametrize("optimizer", ["gd", "lbfgs"])
def test_dgn_codes_respect_bounds(generator, optimizer):
    net = tiny_cnn()
    upper = torch.linspace(0.05, 0.6, 4096)
    res = vis.render(
        net,
        "2",
        [1, 8],
        param="dgn",
        param_options={"generator": generator, "code_bounds": (0.0, upper), "sd": 0.5},
        size=32,
        steps=3,
        optimizer=optimizer,
        lr=1.0 if optimizer == "lbfgs" else 0.5,
        transforms="none",
    )
    codes = res.codes
    assert codes.shape == (2, 4096)
    assert float(codes.min()) >= 0.0
    assert bool((codes <= upper + 1e-7).all())
    assert bool(((codes - upper).abs() < 1e-7).any())  # the upper bound bit
    assert res.images.shape == (2, 3, 32, 32)


def test_generator_weights_load_from_file(tmp_path, generator):
    from safetensors.torch import save_file

    from neuroprint._errors import WeightsError

    code = torch.rand(1, 4096)
    want = generator(code)
    # Caffe-converted files carry no "G." prefix; Lucent's carry it. Both load.
    sd = {k.removeprefix("G."): v.contiguous() for k, v in generator.state_dict().items()}
    save_file(sd, tmp_path / "fc6.safetensors")
    torch.save(generator.state_dict(), tmp_path / "fc6.pt")
    for name in ("fc6.safetensors", "fc6.pt"):
        torch.testing.assert_close(vis.load_generator(tmp_path / name, seed=9)(code), want)
    torch.save({"G.defc7.weight": torch.zeros(2, 2)}, tmp_path / "bad.pt")
    with pytest.raises(WeightsError, match="not an fc6 generator"):
        vis.load_generator(tmp_path / "bad.pt")


# ---------------------------------------------------------------------------------------------
# Pieces


def test_transforms_are_drawn_per_item_and_jitter_is_exact():
    x = torch.rand(1, 3, 16, 16).expand(6, 3, 16, 16).contiguous()
    gens = vis.item_generators(range(6))
    out = vis.Jitter(5)(x, gens)
    assert len({tuple(o.flatten()[:40].tolist()) for o in out}) > 1  # items moved differently
    # An integer shift copies pixels: the centre of every output is a crop of the input.
    for o in out:
        hits = [
            torch.equal(o[:, 4:12, 4:12], x[0, :, 4 - dy : 12 - dy, 4 - dx : 12 - dx])
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        ]
        assert any(hits)
    again = vis.Jitter(5)(x, vis.item_generators(range(6)))
    assert torch.equal(out, again)
    for t in (vis.RandomScale([0.9, 1.1]), vis.RandomRotate([-10, 10]), vis.Blur([0.5, 1.5])):
        y = t(x, gens)
        assert y.shape == x.shape and torch.isfinite(y).all()
    assert vis.Pad(3)(x, gens).shape == (6, 3, 22, 22)


def test_objectives_read_the_right_units():
    net = tiny_cnn()
    x = torch.rand(3, 3, 20, 20)
    reader = vis.LayerReader(net, ["2", "3:pre", "4"])
    acts, grids = reader(x)
    assert grids["2"] == (10, 10) and acts["2"].shape == (3, 16, 100)
    # ":pre" is the module's input: the ReLU's input is conv "2"'s output (pre-activation).
    torch.testing.assert_close(acts["3:pre"], acts["2"])
    ctx = vis.VisContext(acts=acts, grids=grids, images=x, k=3)
    a = acts["2"].view(3, 16, 10, 10)
    torch.testing.assert_close(vis.channel("2", [1, 2, 3])(ctx), a[[0, 1, 2], [1, 2, 3]].mean(dim=(1, 2)))
    torch.testing.assert_close(vis.neuron("2", [4, 5, 6])(ctx), a[[0, 1, 2], [4, 5, 6], 5, 5])
    torch.testing.assert_close(vis.neuron("2", 4, y=1, x=2)(ctx), a[:, 4, 1, 2])
    mask = torch.zeros(16, 10, 10)
    mask[7] = 1
    torch.testing.assert_close(vis.feature_mask("2", mask)(ctx), a[:, 7].mean(dim=(1, 2)))
    w = torch.zeros(16)
    w[[2, 9]] = torch.tensor([1.0, -2.0])
    want = (a[:, 2] - 2 * a[:, 9]).sum(dim=(1, 2)) / 200
    torch.testing.assert_close(vis.feature_weights("2", w)(ctx), want)
    both = 2 * vis.channel("2", 0) - vis.channel("4", 1) * vis.channel("2", 3) + 1.0
    ch = lambda layer, u: acts[layer][:, u].mean(-1)  # noqa: E731
    torch.testing.assert_close(both(ctx), 2 * ch("2", 0) - ch("4", 1) * ch("2", 3) + 1.0)
    assert both.layers == {"2", "4"}
    div = vis.diversity("2")(ctx)
    assert div.shape == (3,) and bool((div <= 0).all())
    with pytest.raises(vis.VisualizeError, match="no layer"):
        vis.LayerReader(net, ["nope"])
    with pytest.raises(ValueError, match="3 items"):
        vis.channel("2", [1, 2])(ctx)


def test_shared_lowres_component_is_one_tensor_for_the_batch():
    net = tiny_cnn()
    p = vis.PixelParam(3, (32, 32), sd=0.0, shared=4, shared_sd=0.5, seed=3)
    with torch.no_grad():
        start = p()
    assert torch.equal(start[0], start[1]) and p.shared.shape == (1, 3, 8, 8)
    res = vis.render(net, "2", [0, 1, 2], param=p, steps=4, transforms="none")
    assert not torch.equal(res.images[0], res.images[1])
    assert not torch.equal(
        p.shared.detach(), vis.PixelParam(3, (32, 32), sd=0.0, shared=4, shared_sd=0.5, seed=3).shared
    )


def test_render_on_an_extractor_and_bad_input():
    from neuroprint import create_extractor

    ex = create_extractor("timm:resnet18", weights="random", layers=["layer1"])
    res = vis.render(ex, "layer1.0.conv1", [0, 9], size=32, steps=3)
    assert res.images.shape == (2, 3, 32, 32)
    with pytest.raises(vis.VisualizeError, match="outside"):
        vis.render(ex, "layer1", [64], size=32, steps=1)
    with pytest.raises(vis.VisualizeError, match="unknown parameterisation"):
        vis.render(ex, "layer1", [0], param="cppn", size=32, steps=1)
    with pytest.raises(vis.VisualizeError, match="unknown optimizer"):
        vis.render(ex, "layer1", [0], optimizer="rmsprop", size=32, steps=1)


def test_direction_objective_is_mean_cosine():
    net = tiny_cnn()
    x = torch.rand(2, 3, 16, 16)
    acts, grids = vis.LayerReader(net, ["2"])(x)
    ctx = vis.VisContext(acts=acts, grids=grids, images=x, k=2)
    v = torch.randn(2, 16)
    a = acts["2"]
    want = torch.stack(
        [torch.nn.functional.cosine_similarity(a[i], v[i][:, None], dim=0).mean() for i in range(2)]
    )
    torch.testing.assert_close(vis.direction("2", v)(ctx), want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_render_runs_on_the_models_cuda_device():
    index = torch.cuda.device_count() - 1  # the last device: never assumes cuda:0
    dev = torch.device("cuda", index)
    net = tiny_cnn().to(dev)
    res = vis.render(net, "2", [0, 3], size=32, steps=4, transforms="standard")
    cpu = vis.render(tiny_cnn(), "2", [0, 3], size=32, steps=4, transforms="standard")
    assert res.images.device.type == "cpu"
    torch.testing.assert_close(res.images, cpu.images, atol=1e-3, rtol=0)


def test_nhwc_layers_are_read_channels_last():
    """timm's Swin keeps stage outputs as [B, H, W, C] (``output_fmt == "NHWC"``)."""
    timm = pytest.importorskip("timm")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = timm.create_model(
            "swin_tiny_patch4_window7_224",
            pretrained=False,
            num_classes=0,
            img_size=56,
            embed_dim=24,
            depths=(1, 1),
            num_heads=(1, 2),
        )
    net = net.eval().requires_grad_(False)
    assert net.output_fmt == "NHWC"
    x = torch.rand(2, 3, 56, 56)
    raw = {}
    handle = net.layers[1].register_forward_hook(lambda m, i, o: raw.setdefault("o", o))
    acts, grids = vis.LayerReader(net, ["layers.1"])(x)
    handle.remove()
    assert raw["o"].shape == (2, 7, 7, 48)
    assert grids["layers.1"] == (7, 7) and acts["layers.1"].shape == (2, 48, 49)
    torch.testing.assert_close(acts["layers.1"], raw["o"].permute(0, 3, 1, 2).flatten(2))
    ctx = vis.VisContext(acts=acts, grids=grids, images=x, k=2)
    # neuron (y=1, x=5) of channel 40 is element [b, 1, 5, 40] of the NHWC output
    torch.testing.assert_close(vis.neuron("layers.1", 40, y=1, x=5)(ctx), raw["o"][:, 1, 5, 40])
    assert vis.layer_channels(net, "layers.1", 56) == 48
    # Swin needs its fixed input size: no padding transforms
    res = vis.render(net, "layers.1", [3, 40], size=56, steps=4, lr=0.05, transforms="none")
    assert bool((res.objective > res.initial).all())


# ---------------------------------------------------------------------------------------------
# Bounded L-BFGS


def test_bounded_lbfgs_solves_box_qps_like_scipy_lbfgsb():
    """K independent box-constrained quadratics in one batch reach scipy L-BFGS-B's optimum each."""
    optimize = pytest.importorskip("scipy.optimize")
    from neuroprint.visualize.optim import BoundedLBFGS

    g = torch.Generator().manual_seed(0)
    k, n = 4, 12
    a = torch.randn(k, n, n, generator=g, dtype=torch.float64)
    h = a @ a.transpose(1, 2) + 0.5 * torch.eye(n, dtype=torch.float64)  # SPD per item
    c = torch.randn(k, n, generator=g, dtype=torch.float64) * 3
    x = nn.Parameter(torch.zeros(k, n, dtype=torch.float64))
    lo, hi = -0.5, torch.linspace(0.1, 1.0, n, dtype=torch.float64)
    opt = BoundedLBFGS([x], items=k, lr=1.0, bounds={id(x): (lo, hi)}, history_size=8)
    seen = []

    def closure():
        seen.append(x.detach().clone())
        f = 0.5 * torch.einsum("ki,kij,kj->k", x, h, x) - (c * x).sum(1)
        f.sum().backward()
        return f.detach()

    for _ in range(60):
        opt.step(closure)
    for pt in seen:  # every evaluation, line-search trials included, is inside the box
        assert float(pt.min()) >= lo and bool((pt <= hi).all())
    for i in range(k):
        hi_np = hi.numpy()
        res = optimize.minimize(
            lambda v, i=i: (0.5 * v @ h[i].numpy() @ v - c[i].numpy() @ v, h[i].numpy() @ v - c[i].numpy()),
            np.zeros(n),
            jac=True,
            method="L-BFGS-B",
            bounds=[(lo, float(u)) for u in hi_np],
            options={"ftol": 1e-15, "gtol": 1e-12},
        )
        torch.testing.assert_close(x[i].detach(), torch.from_numpy(res.x), atol=1e-5, rtol=0)
    on_bounds = ((x - lo).abs() < 1e-9) | ((x - hi).abs() < 1e-9)
    assert on_bounds.any()  # the boxes were active at the optimum


def test_bounded_lbfgs_items_are_independent_problems():
    """Batched items follow the path each follows alone: own history, own line search (float64, where
    rounding cannot hide a coupling; quasi-Newton steps amplify float32 rounding of batched kernels)."""
    from neuroprint.visualize.optim import BoundedLBFGS

    g = torch.Generator().manual_seed(1)
    k, n = 5, 10
    w = torch.randn(k, n, generator=g, dtype=torch.float64)
    # Very different scales: items need different numbers of backtracking trials per step.
    scale = torch.tensor([1.0, 30.0, 0.05, 400.0, 3.0], dtype=torch.float64)
    x0 = torch.rand(k, n, generator=g, dtype=torch.float64)

    def loss_of(x, idx):
        # smooth, non-quadratic, coupled across the coordinates of one item
        return scale[idx] * (nn.functional.softplus(2 * (x * w[idx]).sum(-1)) + (x**4).sum(-1) - x.sum(-1))

    def run(idx):
        x = nn.Parameter(x0[idx].clone())
        opt = BoundedLBFGS([x], items=len(idx), lr=1.0, bounds={id(x): (0.0, 0.8)}, history_size=4)

        def closure():
            f = loss_of(x, idx)
            f.sum().backward()
            return f.detach()

        for _ in range(12):
            opt.step(closure)
        return x.detach(), opt

    both, opt = run(list(range(k)))
    assert opt.evaluations > 2 * 12  # some items backtracked
    for i in range(k):
        alone, _ = run([i])
        torch.testing.assert_close(both[i], alone[0], atol=1e-12, rtol=0)
    assert float(both.min()) >= 0.0 and float(both.max()) <= 0.8


def test_bounded_lbfgs_with_a_shared_component_is_one_problem():
    from neuroprint.visualize.optim import BoundedLBFGS

    p = vis.PixelParam(3, (16, 16), sd=0.1, shared=4, seed=1)
    opt = BoundedLBFGS(list(p.parameters()), items=3, lr=1.0, bounds=p.box())
    assert opt.groups == 1
    res = vis.render(
        tiny_cnn(), "2", [0, 1, 2], param=p, steps=4, optimizer="lbfgs", lr=1.0, transforms="none"
    )
    assert float(res.objective.sum()) > float(res.initial.sum())  # one problem: its total rises
    with pytest.raises(ValueError, match="lower bound is above"):
        x = nn.Parameter(torch.zeros(2, 3))
        BoundedLBFGS([x], items=2, bounds={id(x): (1.0, 0.0)})


def test_channels_last_and_bf16_precision():
    net, units = tiny_cnn(), [1, 4, 9]
    kw = dict(param="fft", size=32, steps=6, lr=0.05, seed=3)
    nchw = vis.render(net, "2", units, channels_last=False, **kw)
    nhwc = vis.render(net, "2", units, channels_last=True, **kw)
    assert nhwc.settings["channels_last"] and not nchw.settings["channels_last"]
    torch.testing.assert_close(nhwc.images, nchw.images, atol=1e-5, rtol=0)  # a layout, not a change
    half = vis.render(net, "2", units, precision="bf16", **kw)
    assert half.settings["precision"] == "bf16" and half.objective.dtype == torch.float32
    # bf16 rounding moves Adam's path (its steps are normalised), but not what the optimisation achieves
    longer = vis.render(net, "2", units, precision="bf16", **{**kw, "steps": 16})
    ref = vis.render(net, "2", units, **{**kw, "steps": 16})
    gain, ref_gain = longer.objective - longer.initial, ref.objective - ref.initial
    assert bool((gain > 0).all()) and abs(float(gain.sum() / ref_gain.sum()) - 1) < 0.15
    with pytest.raises(vis.VisualizeError, match="unknown precision"):
        vis.render(net, "2", units, precision="fp8", **kw)
