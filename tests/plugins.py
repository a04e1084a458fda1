"""A deletion method and an audit attack of a user's own, registered the way a notebook would: no excise file
changes. The registry tests and the bench's smoke run use them."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from excise.components import Component
from excise.edit import ablate
from excise.methods import METHODS, Method, register
from excise.verify import ATTACKS, Attack, probe, register_attack


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


class RequestOnly(Attack):
    """The target's rank under the request prompt alone: a weaker `probes`, but a real rank attack."""

    name = "toy_request_only"
    succeeds = "toy: the target is in the top-B after the request prompt"
    statistic = "-(rank after the request prompt)"

    def run(self, model, facts, config, relearn_n=None):
        ranks = {f.key: None for f in facts}
        for r in probe(model, facts, ("request",), config.top_b):
            k = (r.subject, r.relation)
            ranks[k] = r.rank if ranks[k] is None else min(ranks[k], r.rank)
        return {self.name: [ranks[f.key] for f in facts]}


@contextlib.contextmanager
def registered_toys():
    """The toy method and attack registered for the block's duration (the registries are left as they were)."""
    method, attack = register(HalfLayer()), register_attack(RequestOnly())
    try:
        yield method
    finally:
        METHODS.unregister(method.name)
        ATTACKS.unregister(attack.name)
