"""The peers the cross-checks compare against must be importable: a missing one would turn its parity
tests into silent skips. `make venv` installs them (see PEERS in the Makefile and the test extra)."""

from __future__ import annotations

import importlib

import pytest

PEERS = [
    "vdna",  # VDNA parity
    "pytorch_fid.inception",  # FID Inception parity
    "cleanfid",  # clean resize
    "fungivision",  # FUNGI parity
    "captum.attr",  # explanation parity
    "lucent.optvis.param",  # visualisation parity (its render module needs IPython; the tests stub it)
    "imagehash",  # perceptual hash parity
    "ray",  # Ray runner (local)
    "nvidia.dali.fn",  # DALI CPU pipeline
]


@pytest.mark.parametrize("module", PEERS)
def test_peer_is_importable(module):
    importlib.import_module(module)
