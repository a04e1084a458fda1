"""A deletion method and an audit attack of a user's own, registered the way a notebook would: no excise file
changes. The registry tests and the bench's smoke run use them."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from excise.components import Component
from excise.edit import ablate
from excise.methods import METHODS, Method, register


@dataclass(frozen=True)
class HalfLayerConfig:
    layer: int = 0                    # the block whose first neurons go
    share: float = 0.5                # the share of its MLP neurons zeroed
    seed: int = 0
    progress: bool = True


class HalfLayer(Method):
    """Zero-ablate the first `share` of one block's MLP neurons: a crude deletion, but a real edit."""

    name = "toy_half_layer"
    summary = "toy: zero the first half of one block's MLP neurons"
    Config = HalfLayerConfig

    def run(self, model, facts, context, config, mask):
        n = int(model.cfg.d_mlp * config.share)
        return ablate(model, [Component(config.layer, "neuron", i) for i in range(n)], mode="zero")


@contextlib.contextmanager
def registered_toys():
    """The toy method registered for the block's duration (the registry is left as it was)."""
    method = register(HalfLayer())
    try:
        yield method
    finally:
        METHODS.unregister(method.name)
