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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from excise.components import head_axis
from excise.facts import Fact
from excise.locate.localization import Localization
from excise.models import has_linear, linear
from excise.scoring import answer_examples, answer_logprobs


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
    """Sum a per-parameter diagonal onto neurons, heads, and layer totals (mlp, attn)."""
    cfg = model.cfg
    L, H, dh = cfg.n_layers, cfg.n_heads, cfg.d_head
    n_kv = getattr(cfg, "n_key_value_heads", None) or H
    zero = torch.zeros(())

    def get(p):
        return zero if p is None else F.get(id(p), torch.zeros_like(p))

    neuron, head = torch.zeros(L, cfg.d_mlp), torch.zeros(L, H)
    mlp, attn = torch.zeros(L), torch.zeros(L)
    for l in range(L):
        for name in ("mlp.in", "mlp.gate"):
            if has_linear(model, name):
                v = linear(model, l, name)
                neuron[l] += v.canonical(get(v.weight)).sum(0).cpu()
                if v.bias is not None:
                    neuron[l] += get(v.bias).cpu()
        out = linear(model, l, "mlp.out")
        neuron[l] += out.canonical(get(out.weight)).sum(1).cpu()
        mlp[l] = neuron[l].sum() + (get(out.bias).sum().cpu() if out.bias is not None else 0)
        for name in ("attn.q", "attn.k", "attn.v"):
            v = linear(model, l, name)
            heads = H if name == "attn.q" else n_kv
            w = v.canonical(get(v.weight)).reshape(-1, heads, dh).sum((0, 2))
            if v.bias is not None:
                w = w + get(v.bias).reshape(heads, dh).sum(1)
            head[l] += w.repeat_interleave(H // heads).cpu() if heads != H else w.cpu()
        o = linear(model, l, "attn.o")
        head[l] += o.canonical(get(o.weight)).reshape(H, dh, -1).sum((1, 2)).cpu()
        attn[l] = sum(
            get(p).sum().cpu() for name in ("attn.q", "attn.k", "attn.v", "attn.o")
            for p in (linear(model, l, name).weight, linear(model, l, name).bias) if p is not None
        )
    return {"neuron": neuron, "head": head, "mlp": mlp, "attn": attn}


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
