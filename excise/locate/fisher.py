"""Diagonal empirical Fisher scores, and the selective-synaptic-dampening ratio.

F(theta) = E_facts[(d log p(target | prompt) / d theta)^2], with the target's
whole token sequence, over a forget set and over a retain set. Aggregated to
components: an MLP neuron owns its input weights and bias (W_in column, and
W_gate column for gated MLPs) and its W_out row; a head owns its Q, K, V
columns and biases and its W_O rows; `mlp` and `attn` are a layer's totals.
Selective synaptic dampening (Foster et al. 2023) ranks by forget / retain:
what matters to the forget set and little to the rest.

`per_example=True` (default) squares each example's own gradient, the
definition; `per_example=False` squares gradients of batches of
`batch_size`, the cheaper estimate SSD's code uses. Gradients come from
`torch.autograd.grad`, so no parameter's `.grad` is touched.
Cost: one forward + backward per example (or per batch).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from excise.components import OWNERSHIP, head_axis, unit_sums
from excise.facts import Fact
from excise.locate.localization import Localization
from excise.scoring import answer_examples, answer_logprobs
from excise.weights import has_linear, linear


@dataclass(frozen=True)
class FisherConfig:
    families: tuple[str, ...] = ("request",)   # prompt families each fact contributes
    per_example: bool = True                    # exact empirical Fisher (False: SSD's batch estimate)
    batch_size: int = 16                        # for per_example=False
    eps: float = 1e-12                          # keeps forget / retain finite
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.families:
            raise ValueError("families must name at least one prompt family")


def fisher_diagonal(model: Any, facts: Iterable[Fact], config: FisherConfig | None = None,
                    desc: str = "fisher") -> dict[int, torch.Tensor]:
    """Mean squared gradient of the target log-likelihood; returns {id(parameter): tensor like it}.

    Cost: one forward + backward per example (per_example, the exact
    empirical Fisher) or per batch of `batch_size`; memory: one extra copy of
    every parameter that requires grad (the accumulators) plus its gradients.
    """
    config = config or FisherConfig()
    facts = list(facts)
    if not facts:
        raise ValueError("fisher needs at least one fact; got an empty list")
    examples = answer_examples(model, facts, config.families)
    if not examples:
        raise ValueError(f"the facts have no templates in families {config.families}")
    params = [p for p in dict.fromkeys(model.parameters()) if p.requires_grad]
    if not params:
        raise ValueError("no parameter of the model requires grad; fisher needs gradients")
    acc = [torch.zeros_like(p) for p in params]
    step = 1 if config.per_example else config.batch_size
    batches = [examples[i:i + step] for i in range(0, len(examples), step)]
    for batch in tqdm(batches, desc=desc, disable=not config.progress or len(batches) < 20):
        with torch.enable_grad():
            loss = -answer_logprobs(model, batch).sum()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        for a, g in zip(acc, grads, strict=True):
            if g is not None:
                a.add_(g.detach() ** 2)
    return {id(p): a / len(batches) for p, a in zip(params, acc, strict=True)}


def component_scores(model: Any, F: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sum a per-parameter diagonal onto neurons, heads, and layer totals (mlp, attn), by the weights each
    component owns (`excise.components.OWNERSHIP`, the map parameter masks use)."""
    cfg = model.cfg
    L = cfg.n_layers

    def get(p):
        return F.get(id(p), torch.zeros_like(p))

    per_unit = {"neuron": torch.zeros(L, cfg.d_mlp), "head": torch.zeros(L, cfg.n_heads)}
    layer_total = {"neuron": torch.zeros(L), "head": torch.zeros(L)}
    for l in range(L):
        for name, (unit, _, bias_owner) in OWNERSHIP.items():
            if not has_linear(model, name):
                continue
            v = linear(model, l, name)
            # a key/value head's sum is added to each head of its group (each reads it), once to the layer
            per_unit[unit][l] += unit_sums(cfg, name, v.canonical(get(v.weight)), False).cpu()
            layer_total[unit][l] += get(v.weight).sum().cpu()
            if v.bias is not None:
                if bias_owner == "unit":
                    per_unit[unit][l] += unit_sums(cfg, name, get(v.bias), True).cpu()
                layer_total[unit][l] += get(v.bias).sum().cpu()
    return {"neuron": per_unit["neuron"], "head": per_unit["head"], "mlp": layer_total["neuron"],
            "attn": layer_total["head"]}


def fisher(
    model: Any, forget: Fact | Iterable[Fact], retain: Iterable[Fact] | None = None,
    score: str | None = None, config: FisherConfig | None = None,
) -> Localization:
    """Fisher scores of neurons, heads and layers for `forget` (ratio to `retain` if given).

    `score`: "ratio" (forget / retain, SSD; the default when `retain` is
    given), "forget" or "retain".

    Returns a Localization with per-layer `neuron` and `head` scores and
    `mlp` / `attn` layer totals. Cost: two `fisher_diagonal` passes (forget,
    retain), each one forward + backward per example and prompt family;
    memory: twice the parameters (accumulators and gradients).
    """
    config = config or FisherConfig()
    forget = [forget] if isinstance(forget, Fact) else list(forget)
    retain = None if retain is None else list(retain)
    score = score or ("ratio" if retain else "forget")
    if score not in ("ratio", "forget", "retain"):
        raise ValueError(f"score must be 'ratio', 'forget' or 'retain', got {score!r}")
    if score != "forget" and not retain:
        raise ValueError(f"score={score!r} needs a non-empty retain set")
    f_scores = component_scores(model, fisher_diagonal(model, forget, config, "fisher forget"))
    scores = f_scores
    if score != "forget":
        r_scores = component_scores(model, fisher_diagonal(model, retain, config, "fisher retain"))
        scores = r_scores if score == "retain" else {
            k: f_scores[k] / (r_scores[k] + config.eps) for k in f_scores}
    axes = {"neuron": ("layer", "index"), "head": ("layer", "index"), "mlp": ("layer",), "attn": ("layer",)}
    return Localization(
        method="fisher", scores=scores, axes=axes,
        meta={"score": score, "n_forget": len(forget), "n_retain": len(retain or []),
              "families": list(config.families), "per_example": config.per_example, **head_axis(model.cfg)},
    )
