"""The small base class every extractor network derives from."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def spatial_to_tokens(feat: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, H*W, C] as a view: the copy, if any, is left to whoever reduces it."""
    return feat.flatten(2).transpose(1, 2)


class TapBackbone(nn.Module):
    """A network run for its intermediate activations ("taps").

    ``net`` is the module that (converted) checkpoints load into, so its ``state_dict`` keys are the
    ones a converter must produce. ``forward`` returns at least every selected tap as [B, P, C] and may
    stop computing after the last one.
    """

    def __init__(self, net: nn.Module, tap_channels: dict[str, int]):
        super().__init__()
        self.net = net
        self.tap_channels = dict(tap_channels)  # every tap this network offers, in network order
        self.wanted: frozenset[str] = frozenset(self.tap_channels)
        self.last_index = len(self.tap_channels) - 1

    @property
    def tap_names(self) -> tuple[str, ...]:
        return tuple(self.tap_channels)

    def channels(self, names: Sequence[str], input_size: tuple[int, int]) -> dict[str, int]:
        """Neuron count of each named tap (``input_size`` matters only to networks that must probe)."""
        return {name: self.tap_channels[name] for name in names}

    def select(self, names: Sequence[str]) -> None:
        """Compute only up to the last of ``names``; set once, before any ``torch.compile``."""
        self.wanted = frozenset(names)
        order = self.tap_names
        self.last_index = max(order.index(n) for n in names) if names else len(order) - 1

    def adapt_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Last conversion step that needs the built network (timm's per-model filters); none by default."""
        return state_dict

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError
