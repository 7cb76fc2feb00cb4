"""The extractor registry against vdna 0.1.1's own networks.

vdna downloads its weights inside its constructors; every test here replaces those download
functions (``hf_hub_download`` and ``load_state_dict_from_url`` as each vdna module imported them)
with ones that hand back files this test wrote, so nothing touches the network.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from neuroprint._errors import NeuroprintError, WeightsError
from neuroprint.extractors import (
    Extractor,
    ExtractorConfig,
    UnknownExtractorError,
    create_extractor,
    get_extractor_config,
    list_extractors,
    published_ranges,
    read_ranges_file,
)
from neuroprint.extractors._checkpoint import read_state_dict

vdna_networks = pytest.importorskip("vdna.networks")
from vdna.networks import feature_extraction_model as vdna_fem  # noqa: E402
from vdna.utils.settings import ExtractionSettings  # noqa: E402

HUB_REPO = "bramtoula/visual-dna-models"
VDNA_NAMES = [
    "mugs_vit_small",
    "mugs_vit_base",
    "mugs_vit_large",
    "dino_vit_base",
    "clip_im_vit_b16",
    "clip_im_vit_b32",
    "clip_im_vit_l14",
    "vgg16",
    "dino_resnet50",
    "rand_resnet50",
    "inception",
]
# vdna modules that import a downloader under their own name.
HUB_MODULES = [
    "mugs_vit",
    "dino_vit",
    "clip",
    "dino_resnet50",
    "random_resnet50",
    "vgg16",
    "inception_pytorch",
]
URL_MODULES = ["dino_vit", "dino_resnet50", "inception_pytorch"]


# ----------------------------------------------------------------------------------------------- helpers


def jitter(state_dict: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    """Perturb every constant-initialised float tensor (norm scales/shifts, biases, BN statistics),
    so that a network that ignored one of them would not match by accident."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state_dict.items():
        value = value.clone()
        if value.is_floating_point() and value.numel() > 1 and bool((value == value.flatten()[0]).all()):
            noise = 0.1 * torch.randn(value.shape, generator=gen)
            value = value + noise.abs() if key.endswith("running_var") else value + noise
        out[key] = value
    return out


def scaled_close(ours: torch.Tensor, theirs: torch.Tensor, rel: float = 1e-5) -> None:
    """Equal up to float rounding: tolerance relative to the activation scale of the layer."""
    scale = theirs.abs().max().item() + 1e-12
    torch.testing.assert_close(ours, theirs, atol=rel * scale, rtol=1e-4)


def vdna_to_ours(feat: torch.Tensor) -> torch.Tensor:
    """vdna's [B, C, P, 1] (ViTs) or [B, C, H, W] (CNNs) -> our [B, P, C]."""
    return feat.flatten(2).transpose(1, 2)


def write_ranges(path: Path, layers: dict[str, int]) -> Path:
    ranges = {
        "mins_per_neuron": {layer: {str(i): -1.0 - i for i in range(n)} for layer, n in layers.items()},
        "maxs_per_neuron": {layer: {str(i): 1.0 + i for i in range(n)} for layer, n in layers.items()},
    }
    path.write_text(json.dumps(ranges))
    return path


class FakeDownloads:
    """Stands in for the Hub and torch hub inside vdna; records what vdna asked for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
        self.hub_files: dict[str, Path] = {}
        self.url_objects: dict[str, object] = {}
        self.requested_hub: list[tuple[str, str]] = []
        self.requested_urls: list[str] = []
        self.ranges = write_ranges(tmp_path / "activation_ranges.json", {})
        for module in HUB_MODULES:
            monkeypatch.setattr(f"vdna.networks.{module}.hf_hub_download", self.hf_hub_download)
        for module in URL_MODULES:
            monkeypatch.setattr(f"vdna.networks.{module}.load_state_dict_from_url", self.from_url)
        monkeypatch.setattr(torch.hub, "load_state_dict_from_url", self.from_url)  # vdna's clip.py

    def hf_hub_download(self, repo_id: str, filename: str, **_: object) -> str:
        self.requested_hub.append((repo_id, filename))
        if filename.endswith("activation_ranges.json"):
            return str(self.ranges)
        return str(self.hub_files[filename])

    def from_url(self, url: str, *args: object, **kwargs: object) -> object:
        self.requested_urls.append(url)
        return self.url_objects[url]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeDownloads:
    return FakeDownloads(monkeypatch, tmp_path)


@pytest.fixture
def isolated_caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Empty Hugging Face, torch hub and neuroprint caches, offline."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NEUROPRINT_CACHE", str(tmp_path / "np-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path


def vdna_extractor(name: str) -> torch.nn.Module:
    return vdna_networks.get_feature_extractor(name, ExtractionSettings(device="cpu", verbose=False))


def random_state_dict(name: str, seed: int = 3) -> dict[str, torch.Tensor]:
    """A random state dict of our network for ``name`` (vdna uses the same key names for most)."""
    ex = create_extractor(name, weights="random", seed=seed)
    return jitter(ex.backbone.net.state_dict(), seed=seed)


# ------------------------------------------------------------------------------------ registry and layers


class Captured(Exception):
    def __init__(self, network_settings):
        self.network_settings = network_settings


@pytest.mark.parametrize("name", VDNA_NAMES)
def test_layers_recipe_and_files_match_vdna(name, fake, monkeypatch):
    """vdna builds its NetworkSettings before any weights; capture it there, skipping the heavy build."""

    def capture(self, network_settings, *args, **kwargs):
        raise Captured(network_settings)

    monkeypatch.setattr(vdna_fem.FeatureExtractionModel, "__init__", capture)
    with pytest.raises(Captured) as info:
        vdna_extractor(name)
    settings = info.value.network_settings
    config = get_extractor_config(name)
    assert isinstance(config, ExtractorConfig)
    assert list(config.layers.items()) == list(settings.neurons_per_layer.items())
    assert config.recipe.size == tuple(settings.expected_size)
    assert config.recipe.mean == tuple(settings.norm_mean)
    assert config.recipe.std == tuple(settings.norm_std)
    assert config.recipe.resize == "clean" and config.recipe.crop == "none"
    assert config.hub_repo == HUB_REPO
    if config.ranges_file is not None:
        assert fake.requested_hub == [(HUB_REPO, config.ranges_file)]


def test_vdna_dino_vit_small_is_broken_upstream(fake):
    # vdna 0.1.1 lists dino_vit_small but rejects it; ours builds DINO's ViT-S/16.
    with pytest.raises(ValueError):
        vdna_extractor("dino_vit_small")
    assert list(get_extractor_config("dino_vit_small").layers.values()) == [384] * 13


def test_list_extractors_holds_every_vdna_name():
    assert set(VDNA_NAMES) | {"dino_vit_small"} <= set(list_extractors())


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownExtractorError) as info:
        create_extractor("not_a_network", weights="random")
    message = str(info.value)
    assert "mugs_vit_base" in message and "inception" in message and "timm" in message
    assert isinstance(info.value, NeuroprintError)
    with pytest.raises(UnknownExtractorError):
        get_extractor_config("timm:not_a_timm_model")


def test_unknown_layer_lists_valid_layers():
    with pytest.raises(UnknownExtractorError, match="relu_1_1"):
        create_extractor("vgg16", weights="random", layers=["relu_9_9"])


# ----------------------------------------------------------------------------------- shapes, random weights

SMALL_INPUT = {"vgg16": 48, "dino_resnet50": 64, "rand_resnet50": 64, "inception": 96}


@pytest.mark.parametrize(
    "name",
    [n for n in VDNA_NAMES if n not in ("mugs_vit_large", "clip_im_vit_l14")]
    + ["dino_vit_small", pytest.param("mugs_vit_large", marks=pytest.mark.slow)],
)
def test_random_weights_output_shapes(name):
    ex = create_extractor(name, weights="random")
    assert isinstance(ex, Extractor)
    assert ex.name == name and ex.weights_id == "random:seed=0"
    assert ex.layers == get_extractor_config(name).layers
    side = SMALL_INPUT.get(name, ex.recipe.size[0])
    with torch.no_grad():
        out = ex(torch.randn(2, 3, side, side))
    assert list(out) == list(ex.layers)
    for layer, feat in out.items():
        assert feat.ndim == 3 and feat.shape[0] == 2 and feat.shape[2] == ex.layers[layer], layer
        assert torch.isfinite(feat).all()
    if name.startswith(("mugs", "dino_vit")):
        assert all(f.shape[1] == 197 for f in out.values())
    if name.startswith("clip"):
        assert out["last_norm"].shape[1] == 1
        assert out["block_0"].shape[1] == (224 // int(name[-2:])) ** 2 + 1
    if name == "inception":
        assert out["block_3"].shape[1] == 1


def test_cnn_taps_are_transposed_views():
    ex = create_extractor("rand_resnet50", weights="random", layers=["layer1_0"])
    with torch.no_grad():
        feat = ex(torch.randn(1, 3, 32, 32))["layer1_0"]
    assert feat.shape == (1, 64, 256)
    assert feat.stride()[1] == 1  # spatial positions are contiguous: a view of NCHW, not a copy


def test_random_weights_are_seeded_and_leave_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = create_extractor("vgg16", weights="random", seed=5, layers=["relu_1_1"])
    assert torch.equal(torch.rand(3), expected_next)
    b = create_extractor("vgg16", weights="random", seed=5, layers=["relu_1_1"])
    c = create_extractor("vgg16", weights="random", seed=6, layers=["relu_1_1"])
    wa, wb, wc = (e.backbone.net.features[0].weight for e in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_frozen_eval_subset_order_and_dtype():
    ex = create_extractor("vgg16", weights="random", layers=["relu_2_1", "relu_1_1"], dtype=torch.float64)
    assert list(ex.layers) == ["relu_2_1", "relu_1_1"]
    assert all(not p.requires_grad for p in ex.parameters())
    ex.train()
    assert not ex.training and not ex.backbone.training
    out = ex(torch.randn(1, 3, 32, 32))  # float32 input is cast to the extractor's dtype
    assert list(out) == ["relu_2_1", "relu_1_1"]
    assert out["relu_1_1"].dtype == torch.float64 and out["relu_2_1"].shape == (1, 256, 128)


# ------------------------------------------------------------------------------------ parity with vdna


def test_mugs_vit_base_matches_vdna(fake, tmp_path):
    sd = random_state_dict("mugs_vit_base")
    # Mugs checkpoints carry a pre-training relation block; vdna's network has it, ours drops it.
    sd_vdna = dict(sd)
    sd_vdna.update(
        {"relation_blocks.0." + k[len("blocks.0.") :]: v for k, v in sd.items() if k.startswith("blocks.0.")}
    )
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": sd_vdna}, path)
    fake.hub_files["Mugs/mugs_vit_base/weights.pth"] = path
    theirs_net = vdna_extractor("mugs_vit_base")
    assert (HUB_REPO, get_extractor_config("mugs_vit_base").weights_file) in fake.requested_hub

    ours = create_extractor("mugs_vit_base", weights=path)
    assert ours.weights_id.startswith("file:weights.pth:sha256=")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        theirs, mine = theirs_net.get_features(x), ours(x)
    assert list(theirs) == list(mine)
    for layer in theirs:
        scaled_close(mine[layer], vdna_to_ours(theirs[layer]))


def test_dino_vit_base_matches_vdna(fake, tmp_path):
    sd = random_state_dict("dino_vit_base")
    url = get_extractor_config("dino_vit_base").weights_file
    fake.url_objects[url] = sd
    theirs_net = vdna_extractor("dino_vit_base")
    assert fake.requested_urls == [url]

    # A DINO training checkpoint: teacher network under "backbone.", plus the projection head.
    path = tmp_path / "checkpoint.pth"
    teacher = {"backbone." + k: v for k, v in sd.items()}
    teacher["head.mlp.0.weight"] = torch.zeros(4, 768)
    torch.save({"teacher": teacher, "epoch": 100}, path)
    ours = create_extractor("dino_vit_base", weights=path, layers=["block_0", "block_11", "last_norm"])
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        theirs, mine = theirs_net.get_features(x), ours(x)
    for layer in mine:
        scaled_close(mine[layer], vdna_to_ours(theirs[layer]))


def test_clip_vit_b16_matches_vdna(fake, tmp_path):
    from vdna.networks import clip as vdna_clip

    # An OpenAI-layout CLIP with the real image tower and a tiny text tower (vdna reads both).
    torch.manual_seed(4)
    openai = vdna_clip.CLIP(512, 224, 12, 768, 16, 4, 8, 64, 1, 1)
    # vdna runs CLIP in fp16: fp16-representable values make its fp32 copy hold exactly our weights.
    sd = {k: v.half().float() for k, v in jitter(openai.state_dict(), seed=4).items()}

    class JitLike:  # what torch hub returns for OpenAI's TorchScript file
        def eval(self):
            return self

        def state_dict(self):
            return dict(sd)

    url = get_extractor_config("clip_im_vit_b16").weights_file
    fake.url_objects[url] = JitLike()
    theirs_net = vdna_extractor("clip_im_vit_b16")
    assert fake.requested_urls == [url]
    path = tmp_path / "ViT-B-16.pth"
    torch.save(sd, path)
    ours = create_extractor("clip_im_vit_b16", weights=path)

    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        theirs_fp16 = theirs_net.get_features(x)
        theirs_net.model.float()
        theirs = theirs_net.get_features(x)
        mine = ours(x)
    assert list(theirs) == list(mine)
    for layer in theirs:
        if layer == "last_norm":
            # vdna's last_norm is the CLS token laid out as [1, C, B, 1]: batch where positions go.
            expected = theirs[layer].squeeze(3).squeeze(0).transpose(0, 1).unsqueeze(1)
            expected_fp16 = theirs_fp16[layer].squeeze(3).squeeze(0).transpose(0, 1).unsqueeze(1)
        else:
            expected, expected_fp16 = vdna_to_ours(theirs[layer]), vdna_to_ours(theirs_fp16[layer])
        scaled_close(mine[layer], expected)
        # vdna's own fp16 pipeline agrees to fp16 precision.
        scaled_close(mine[layer], expected_fp16.float(), rel=3e-2)


@pytest.mark.filterwarnings("ignore::UserWarning")  # torchvision's notes on vdna's `pretrained=True`
def test_vgg16_matches_vdna(fake, tmp_path, monkeypatch):
    import torchvision.models._api as tv_api

    full = random_state_dict("vgg16")
    # torchvision loads the classifier strictly; zeros cost no time to make.
    for i, shape in ((0, (4096, 25088)), (3, (4096, 4096)), (6, (1000, 4096))):
        full[f"classifier.{i}.weight"] = torch.zeros(shape)
        full[f"classifier.{i}.bias"] = torch.zeros(shape[0])
    urls = []
    monkeypatch.setattr(
        tv_api, "load_state_dict_from_url", lambda url, *a, **k: urls.append(url) or dict(full)
    )
    theirs_net = vdna_extractor("vgg16")
    assert urls == [get_extractor_config("vgg16").weights_file]

    path = tmp_path / "vgg16-397923af.pth"
    torch.save(full, path)
    ours = create_extractor("vgg16", weights=path)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        theirs, mine = theirs_net.get_features(x), ours(x)
    assert list(theirs) == list(mine)
    for layer in theirs:
        scaled_close(mine[layer], vdna_to_ours(theirs[layer]))


@pytest.mark.parametrize("name", ["rand_resnet50", "dino_resnet50"])
def test_resnet50_matches_vdna(name, fake, tmp_path):
    import safetensors.torch

    sd = random_state_dict(name)
    config = get_extractor_config(name)
    if name == "rand_resnet50":
        path = tmp_path / "weights.pth"
        torch.save({"model_state_dict": sd}, path)
        fake.hub_files[config.weights_file] = path
    else:
        fake.url_objects[config.weights_file] = {"module." + k: v for k, v in sd.items()}
        path = tmp_path / "dino_resnet50.safetensors"
        safetensors.torch.save_file({"module." + k: v.contiguous() for k, v in sd.items()}, str(path))
    theirs_net = vdna_extractor(name)
    ours = create_extractor(name, weights=path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        # vdna's forward() moves the batch to CUDA; its backbone pass is the CPU-safe part.
        _, theirs = theirs_net.forward_backbone(x)
        mine = ours(x)
    assert list(theirs) == list(mine)
    for layer in theirs:
        scaled_close(mine[layer], vdna_to_ours(theirs[layer]))


@pytest.mark.filterwarnings("ignore::UserWarning")  # torchvision's notes on vdna's `pretrained=False`
def test_inception_matches_vdna(fake, tmp_path):
    sd = random_state_dict("inception")
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1008, 2048), torch.randn(1008)  # the legacy classifier
    url = get_extractor_config("inception").weights_file
    fake.url_objects[url] = sd
    theirs_net = vdna_extractor("inception")
    assert fake.requested_urls == [url]
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(sd, path)
    ours = create_extractor("inception", weights=path)
    x = torch.rand(1, 3, 299, 299) * 2 - 1
    with torch.no_grad():
        theirs, mine = theirs_net.get_features(x), ours(x)
    assert list(theirs) == list(mine)
    for layer in theirs:
        scaled_close(mine[layer], vdna_to_ours(theirs[layer]))


# ------------------------------------------------------------------------------------------- weights


def test_safetensors_and_pth_give_identical_outputs(tmp_path):
    import safetensors.torch

    sd = random_state_dict("rand_resnet50", seed=8)
    st, pth = tmp_path / "w.safetensors", tmp_path / "w.pth"
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    torch.save(sd, pth)
    a = create_extractor("rand_resnet50", weights=st, layers=["layer2_0", "layer4_2"])
    b = create_extractor("rand_resnet50", weights=str(pth), layers=["layer2_0", "layer4_2"])
    assert a.weights_id.startswith("file:w.safetensors:sha256=") and len(a.weights_id.split("=")[1]) == 16
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        oa, ob = a(x), b(x)
    for layer in oa:
        assert torch.equal(oa[layer], ob[layer])


def test_default_weights_offline_fail_fast_with_instructions(isolated_caches):
    start = time.monotonic()
    with pytest.raises(WeightsError) as info:
        create_extractor("mugs_vit_base")
    message = str(info.value)
    assert "\n" not in message
    assert HUB_REPO in message and "Mugs/mugs_vit_base/weights.pth" in message
    assert "HF_HUB_OFFLINE" in message and str(isolated_caches / "np-cache") in message
    assert "weights=" in message

    with pytest.raises(WeightsError) as info:
        create_extractor("inception")
    message = str(info.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in message and "torch-home" in message
    assert time.monotonic() - start < 20


def test_default_weights_from_the_local_caches(isolated_caches):
    sd = random_state_dict("rand_resnet50", seed=2)
    mirror = isolated_caches / "np-cache" / "hub" / HUB_REPO / "Random/rand_resnet50/weights.pth"
    mirror.parent.mkdir(parents=True)
    torch.save({"model_state_dict": sd}, mirror)
    ex = create_extractor("rand_resnet50", layers=["layer1_0"])
    assert ex.weights_id == f"default:{HUB_REPO}/Random/rand_resnet50/weights.pth"
    assert torch.equal(ex.backbone.net.conv1.weight, sd["conv1.weight"])

    config = get_extractor_config("dino_resnet50")
    cached = isolated_caches / "torch-home" / "hub" / "checkpoints" / "dino_resnet50_pretrain.pth"
    cached.parent.mkdir(parents=True)
    torch.save(sd, cached)
    ex = create_extractor("dino_resnet50", layers=["layer1_0"])
    assert ex.weights_id == f"default:{config.weights_file}"


def test_corrupt_or_mismatched_weights_raise_weights_error(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(WeightsError, match="bad.pth") as info:
        create_extractor("vgg16", weights=bad)
    assert "\n" not in str(info.value)
    truncated = tmp_path / "bad.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(WeightsError):
        create_extractor("vgg16", weights=truncated)
    with pytest.raises(WeightsError, match="neither"):
        create_extractor("vgg16", weights=tmp_path / "missing.pth")

    wrong = tmp_path / "resnet.pth"
    torch.save(random_state_dict("rand_resnet50"), wrong)
    with pytest.raises(WeightsError, match="missing features.0.weight") as info:
        create_extractor("vgg16", weights=wrong)
    assert "unexpected" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_archives_are_read_without_pickle(tmp_path):
    path = tmp_path / "scripted.pt"
    net = torch.jit.script(torch.nn.Linear(3, 2))
    net.save(str(path))
    sd = read_state_dict(path)
    assert set(sd) == {"weight", "bias"} and torch.equal(sd["weight"], net.weight)


# ------------------------------------------------------------------------------------- published ranges


def test_published_ranges_from_local_mirror(isolated_caches):
    file = isolated_caches / "np-cache" / "hub" / HUB_REPO / "VGG/vgg16/activation_ranges.json"
    file.parent.mkdir(parents=True)
    write_ranges(file, {"relu_1_1": 3, "relu_1_2": 2})
    ranges = published_ranges("vgg16")
    assert set(ranges) == {"mins_per_neuron", "maxs_per_neuron"}
    assert ranges["mins_per_neuron"]["relu_1_1"] == {0: -1.0, 1: -2.0, 2: -3.0}
    assert ranges["maxs_per_neuron"]["relu_1_2"] == {0: 1.0, 1: 2.0}
    assert read_ranges_file(file) == ranges


def test_published_ranges_offline_or_absent(isolated_caches):
    with pytest.raises(WeightsError) as info:
        published_ranges("dino_vit_base")
    message = str(info.value)
    assert "DINO/dino_vit_base/activation_ranges.json" in message and HUB_REPO in message
    assert 'ranges="auto"' in message and "np-cache" in message and "\n" not in message
    with pytest.raises(WeightsError, match="no activation ranges"):
        published_ranges("mugs_vit_small")


def test_published_ranges_through_the_hub_client(monkeypatch, tmp_path):
    import huggingface_hub

    file = write_ranges(tmp_path / "r.json", {"block_0": 2})
    calls = []

    def download(repo_id, filename, local_files_only=False, **_):
        calls.append((repo_id, filename))
        return str(file)

    monkeypatch.setenv("NEUROPRINT_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    assert published_ranges("inception")["mins_per_neuron"]["block_0"] == {0: -1.0, 1: -2.0}
    assert calls == [(HUB_REPO, "Inception/inception_v3/activation_ranges.json")]


# ------------------------------------------------------------------------------------------- any timm


def test_timm_model_with_named_layers():
    ex = create_extractor("timm:resnet18", weights="random", layers=["layer1", "layer4"])
    assert ex.name == "timm:resnet18" and ex.layers == {"layer1": 64, "layer4": 512}
    assert ex.recipe.size == (224, 224) and ex.recipe.resize == "clean" and ex.recipe.crop == "none"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = ex(x)
        net = ex.backbone.net
        l1 = net.layer1(net.maxpool(net.act1(net.bn1(net.conv1(x)))))
        l4 = net.layer4(net.layer3(net.layer2(l1)))
    assert list(out) == ["layer1", "layer4"]
    assert torch.equal(out["layer1"], l1.flatten(2).transpose(1, 2))
    assert torch.equal(out["layer4"], l4.flatten(2).transpose(1, 2))


def test_timm_plain_name_defaults_to_feature_info_and_tokens_stay():
    ex = create_extractor("resnet18", weights="random")
    assert ex.name == "timm:resnet18"
    assert ex.layers == {"act1": 64, "layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512}
    vit = create_extractor("timm:vit_tiny_patch16_224", weights="random", layers=["blocks.0", "norm"])
    with torch.no_grad():
        out = vit(torch.randn(1, 3, 224, 224))
    assert out["blocks.0"].shape == (1, 197, 192) and out["norm"].shape == (1, 197, 192)
    with pytest.raises(UnknownExtractorError, match="no module"):
        create_extractor("timm:resnet18", weights="random", layers=["layer9"])
