"""The options several sub-commands share are defined once (neuroprint.cli.common): every sub-command that
takes one spells it the same and explains it the same; old spellings stay as aliases."""

from __future__ import annotations

import argparse

from neuroprint.cli import _parser
from neuroprint.cli.common import _SHARED, SHARED_DEFAULTS, add_shared


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(sub):
    return {a.dest: a for a in sub._actions if a.option_strings}


# options whose name is shared but whose meaning is the command's own, on purpose
OWN_MEANING = {
    ("extractors", "layers"),  # neuroprint extractors --layers: also list every layer (a switch)
    ("score", "weights"),  # the reference's weights unless given (no default of its own)
    ("visualize", "batch_size"),  # units optimised together, not images
    ("features", "weights"),  # the FUNGI timm model's weights ('random', 'timm', a state dict), with --model
}


def test_every_shared_option_is_spelled_and_explained_once():
    subs = _subparsers(_parser())
    assert {"profile", "dedup", "explain", "features", "visualize", "rf"} <= set(subs)
    seen = {name: [] for name in _SHARED}
    for cmd, sub in subs.items():
        for dest, action in _options(sub).items():
            if dest not in _SHARED or (cmd, dest) in OWN_MEANING:
                continue
            flags, kwargs = _SHARED[dest]
            assert action.option_strings[0] == flags[0], (cmd, dest, action.option_strings)
            assert action.help == kwargs["help"], (cmd, dest)
            seen[dest].append(cmd)
    # each is taken somewhere (--layers and --decoder by profile only today: the next job commands share them)
    assert all(seen.values()), seen
    assert set(seen["extractor"]) >= {"profile", "dedup", "explain", "rf", "visualize"}
    assert set(seen["ray"]) >= {"profile", "dedup", "features"}
    assert set(seen["device"]) >= {"profile", "dedup", "explain", "features", "visualize", "rf", "score"}


def test_defaults_may_differ_by_command_and_old_spellings_still_parse():
    subs = _subparsers(_parser())
    assert _options(subs["profile"])["batch_size"].default == 64
    assert _options(subs["explain"])["batch_size"].default == 8
    args = subs["explain"].parse_args(["SRC", "--out-dir", "o", "--layer", "l", "--workers", "3"])
    assert args.num_workers == 3
    assert args.device == SHARED_DEFAULTS["device"] == "auto"


def test_add_shared_refuses_a_default_for_an_option_it_did_not_add():
    p = argparse.ArgumentParser()
    try:
        add_shared(p, "device", batch_size=3)
    except TypeError as err:
        assert "batch_size" in str(err)
    else:
        raise AssertionError("a default for an option not added was accepted")
