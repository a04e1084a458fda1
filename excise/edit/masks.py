"""Parameter masks: which weight entries an edit may change, built from Components.

A neuron owns its W_in (and W_gate) column, its b_in entry and its W_out row;
a head owns its Q, K, V column blocks and bias blocks and its W_O row block;
`mlp` / `attn` own their whole layer's MLP / attention weights (biases
included). Masks are keyed by the parameter the forward pass uses (for GPT-2
under TransformerBridge: q, k, v, not the fused qkv they view).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from excise.components import Component


def _set(masks: dict[int, tuple[torch.nn.Parameter, torch.Tensor]], p: torch.nn.Parameter | None,
         view_transposed: bool, index: tuple) -> None:
    if p is None:
        return
    if id(p) not in masks:
        masks[id(p)] = (p, torch.zeros(p.shape, dtype=torch.bool, device=p.device))
    m = masks[id(p)][1]
    (m.T if view_transposed else m)[index] = True


def parameter_masks(model: Any, components: Iterable[Component]) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """(parameter, boolean mask of its editable entries) for every parameter the components own
    (`Component.weight_slices`)."""
    comps = list(components)
    if not comps:
        raise ValueError("the mask is empty: pass at least one component (or mask=None for all parameters)")
    masks: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = {}
    for c in comps:
        for view, is_bias, index in c.weight_slices(model):
            if is_bias:
                _set(masks, view.bias, False, index)
            else:
                _set(masks, view.weight, view.transposed, index)
    return list(masks.values())


def all_parameter_masks(model: Any) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """Every parameter the forward pass uses (the ones a loss reaches), fully editable."""
    seen, out = set(), []
    owners = {}
    for p in model.parameters():
        owners.setdefault(p.untyped_storage().data_ptr(), []).append(p)
    for group in owners.values():
        # a fused matrix and its views share storage; the forward uses the views when there are any
        used = [p for p in group if p.numel() < max(q.numel() for q in group)] or group
        for p in used:
            if id(p) not in seen and p.requires_grad:
                seen.add(id(p))
                out.append((p, torch.ones(p.shape, dtype=torch.bool, device=p.device)))
    return out


def masked_step(opt: torch.optim.Optimizer, masks: list[tuple[torch.nn.Parameter, torch.Tensor]],
                grads: Iterable[torch.Tensor | None]) -> None:
    """One optimizer step in which each parameter moves only where its mask is 1 (`grads` in `masks` order)."""
    for (p, m), g in zip(masks, grads, strict=True):
        p.grad = None if g is None else g * m
    opt.step()
    opt.zero_grad(set_to_none=True)


def count(masks: list[tuple[torch.nn.Parameter, torch.Tensor]]) -> int:
    return int(sum(int(m.sum()) for _, m in masks))


def random_like(model: Any, components: Iterable[Component], seed: int = 0) -> list[Component]:
    """A seeded random control for a located set: as many components of each kind, drawn uniformly
    from the whole model (neurons over every layer's MLP, heads over every layer), so it owns as
    many weights as the located set (for neurons and heads every one owns the same number).

    Returns the drawn components, sorted per kind. Cost: no model call; O(len(components)) draws.
    """
    import random

    comps = list(components)
    if not comps:
        raise ValueError("random_like needs the located components to match (got none)")
    cfg = model.cfg
    sizes = {"neuron": cfg.d_mlp, "head": cfg.n_heads}
    rng = random.Random(seed)
    out: list[Component] = []
    for kind in sorted({c.kind for c in comps}):
        if kind not in sizes:
            raise ValueError(f"random_like draws neurons and heads; got {kind!r} components")
        n = sum(c.kind == kind for c in comps)
        population = cfg.n_layers * sizes[kind]
        if n > population:
            raise ValueError(f"{n} {kind}s asked for, the model has {population}")
        out += [Component(i // sizes[kind], kind, i % sizes[kind]) for i in sorted(rng.sample(range(population), n))]
    return out
