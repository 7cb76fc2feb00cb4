"""Our FID Inception against pytorch-fid's ``InceptionV3``, given the same (random) weights.

pytorch-fid downloads ``pt_inception-2015-12-05-6726825d.pth`` inside ``fid_inception_v3``; the test
replaces that download with a random state dict in the file's own layout (torchvision key names,
the legacy 1008-way classifier, no ``num_batches_tracked``), and loads the same dict into ours from
a file of that name.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from neuroprint.extractors import create_extractor, get_extractor_config

pfi = pytest.importorskip("pytorch_fid.inception")

FILE = "pt_inception-2015-12-05-6726825d.pth"


def fid_state_dict(seed: int = 11) -> dict[str, torch.Tensor]:
    """Random weights in pytorch-fid's file layout, with norm statistics off their initial values."""
    net = create_extractor("inception", weights="random", seed=seed).backbone.net
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue  # the published file predates this buffer
        noise = 0.1 * torch.randn(value.shape, generator=gen)
        if key.endswith("running_var"):
            value = value + noise.abs()
        elif key.endswith(("running_mean", "bn.weight", "bn.bias")):
            value = value + noise
        sd[key] = value.clone()
    sd["fc.weight"] = torch.randn(1008, 2048, generator=gen)
    sd["fc.bias"] = torch.randn(1008, generator=gen)
    return sd


@pytest.fixture
def weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[dict[str, torch.Tensor], Path]:
    sd = fid_state_dict()
    urls = []
    monkeypatch.setattr(pfi, "load_state_dict_from_url", lambda url, *a, **k: urls.append(url) or dict(sd))
    path = tmp_path / FILE
    torch.save(sd, path)
    yield sd, path
    assert all(url == pfi.FID_WEIGHTS_URL for url in urls)


def close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    scale = theirs.abs().max().item() + 1e-12
    torch.testing.assert_close(ours, theirs, atol=1e-5 * scale, rtol=1e-4)


def test_every_block_matches_pytorch_fid(weights):
    _, path = weights
    theirs_net = pfi.InceptionV3([0, 1, 2, 3], resize_input=False, normalize_input=False).eval()
    ours = create_extractor("inception", weights=path)
    assert ours.weights_id.startswith(f"file:{FILE}:sha256=")
    images = torch.rand(2, 3, 299, 299)
    x = (images - 0.5) / 0.5  # our recipe: mean 0.5, std 0.5
    with torch.no_grad():
        theirs = theirs_net(x)
        mine = ours(x)
    assert list(mine) == ["block_0", "block_1", "block_2", "block_3"]
    for feat, ours_feat in zip(theirs, mine.values()):
        close(ours_feat, feat.flatten(2).transpose(1, 2))
    assert mine["block_3"].shape == (2, 1, 2048)


def test_pool3_matches_pytorch_fid_default_normalisation(weights):
    """pytorch-fid's own input scaling (2x - 1 on [0, 1] images) is our recipe's (x - 0.5) / 0.5."""
    _, path = weights
    theirs_net = pfi.InceptionV3([3], resize_input=False).eval()  # normalize_input=True
    ours = create_extractor("inception", weights=path, layers=["block_3"])
    recipe = get_extractor_config("inception").recipe
    assert recipe.size == (299, 299) and recipe.mean == (0.5,) * 3 and recipe.std == (0.5,) * 3
    images = torch.rand(1, 3, 299, 299)
    mean, std = torch.tensor(recipe.mean).view(1, 3, 1, 1), torch.tensor(recipe.std).view(1, 3, 1, 1)
    with torch.no_grad():
        (pool3,) = theirs_net(images)
        mine = ours((images - mean) / std)["block_3"]
    close(mine[:, 0, :], pool3[:, :, 0, 0])


def test_default_weights_come_from_the_torch_hub_cache(weights, monkeypatch, tmp_path):
    sd, _ = weights
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    cached = tmp_path / "torch-home" / "hub" / "checkpoints" / FILE
    cached.parent.mkdir(parents=True)
    torch.save(sd, cached)
    ex = create_extractor("inception", layers=["block_0"])
    assert ex.weights_id == f"default:{pfi.FID_WEIGHTS_URL}"
    assert get_extractor_config("inception").weights_file == pfi.FID_WEIGHTS_URL
    assert torch.equal(ex.backbone.net.Conv2d_1a_3x3.conv.weight, sd["Conv2d_1a_3x3.conv.weight"])
