"""Ablation baked into weights: the effect of a zero or mean ablation, without hooks.

- Neuron i of layer l: its output is a_i * W_out[i]. Zero ablation sets
  W_out[i] = 0; mean ablation (a_i replaced by its mean m_i over a text
  sample) adds m_i * W_out[i] to b_out, then sets W_out[i] = 0.
- Head h of layer l: its output is z_h @ W_O[h] (z_h: [d_head]). Zero
  ablation sets W_O[h] = 0; mean ablation adds mean(z_h) @ W_O[h] to b_O.
- `mlp` / `attn` of layer l: every neuron / head of that layer.

After the edit, the model computes what the hooked ablation computes (a test
checks the logits), and an EditRecord holds the change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from excise.components import OUTPUT_LINEAR, Component, forward_keeping, hook_name
from excise.edit.record import EditRecord, recording
from excise.scoring import encode, pad_batch
from excise.weights import device_of, linear

MODES = ("zero", "mean")


def _check(model: Any, components: Sequence[Component]) -> list[Component]:
    comps = list(components)
    if not comps:
        raise ValueError("ablate needs at least one component; the mask is empty")
    for c in comps:
        if not isinstance(c, Component):
            raise TypeError(f"ablate takes Components, got {type(c).__name__}")
        if c.kind not in ("neuron", "head", "mlp", "attn"):
            raise ValueError(f"cannot bake an ablation of {c} into weights: only neuron, head, "
                             "mlp and attn components have their own output weights")
        if c.position is not None:
            raise ValueError(f"{c} names a position, but a weight edit acts at every position; "
                             "drop position= from the component")
        c.check(model)
    return comps


@torch.no_grad()
def mean_activations(model: Any, texts: Sequence[str], layers: Iterable[int], batch_size: int = 32
                     ) -> dict[str, torch.Tensor]:
    """Mean MLP activation ([d_mlp]) and head z ([n_heads, d_head]) per layer over all real tokens.

    Returns {hook name: mean}. Cost: ceil(len(texts) / batch_size) forwards;
    memory: one batch's activations at the hooked layers.
    """
    layers = sorted(set(layers))
    if not texts:
        raise ValueError("mean ablation needs a text sample: pass sample=[...] (strings)")
    sums: dict[str, torch.Tensor] = {}
    count = 0
    rows = encode(model, list(texts))
    pad = model.tokenizer.pad_token_id or 0
    device = device_of(model)
    names = [hook_name("neuron", l) for l in layers] + [hook_name("head", l) for l in layers]
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        tokens, last = pad_batch(batch, pad)
        real = torch.arange(tokens.shape[1])[None] <= last[:, None]        # [b, pos]
        _, acts = forward_keeping(model, tokens.to(device), names)
        mask = real.to(device)
        for n in names:
            total = acts[n][mask].float().sum(0).cpu()
            sums[n] = sums.get(n, 0) + total
        count += int(real.sum())
    return {n: s / count for n, s in sums.items()}


def ablate(
    model: Any, components: Sequence[Component], mode: str = "zero",
    sample: Sequence[str] | None = None,
) -> EditRecord:
    """Bake a zero or mean ablation of `components` into the weights; returns the EditRecord.

    Cost: for mode="mean", one forward per 32 sample texts; the edit itself is
    a few row writes.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    comps = _check(model, components)
    cfg = model.cfg
    neurons: dict[int, list[int]] = {}
    heads: dict[int, list[int]] = {}
    for c in comps:
        if c.kind == "neuron":
            neurons.setdefault(c.layer, []).append(c.index)
        elif c.kind == "mlp":
            neurons.setdefault(c.layer, []).extend(range(cfg.d_mlp))
        elif c.kind == "head":
            heads.setdefault(c.layer, []).append(c.index)
        else:
            heads.setdefault(c.layer, []).extend(range(cfg.n_heads))
    means = mean_activations(model, sample or [], set(neurons) | set(heads)) if mode == "mean" else {}
    scope = []
    for l in neurons:
        v = linear(model, l, OUTPUT_LINEAR["neuron"])
        scope += [v.weight] + ([v.bias] if v.bias is not None else [])
    for l in heads:
        v = linear(model, l, OUTPUT_LINEAR["head"])
        scope += [v.weight] + ([v.bias] if v.bias is not None else [])
    no_bias = [l for l in neurons if linear(model, l, OUTPUT_LINEAR["neuron"]).bias is None] + \
        [l for l in heads if linear(model, l, OUTPUT_LINEAR["head"]).bias is None]
    if mode == "mean" and no_bias:
        raise ValueError("mean ablation moves the mean into the output bias, and this model's "
                         "MLP/attention outputs have none; use mode='zero'")
    hyper = {"mode": mode, "components": [c.to_dict() for c in comps], "sample_size": len(sample or [])}
    with recording(model, f"ablate_{mode}", hyper, scope=scope) as box, torch.no_grad():
        for l, idx in neurons.items():
            v = linear(model, l, OUTPUT_LINEAR["neuron"])
            idx_t = torch.tensor(sorted(set(idx)), device=v.weight.device)
            W = v.W                                                    # [d_mlp, d_model]
            if mode == "mean":
                m = means[hook_name("neuron", l)][idx_t.cpu()].to(W.device, W.dtype)
                v.bias.add_(m @ W[idx_t])
            W[idx_t] = 0
        for l, hs in heads.items():
            v = linear(model, l, OUTPUT_LINEAR["head"])
            W = v.W.view(cfg.n_heads, cfg.d_head, -1)                  # [head, d_head, d_model]
            hs_t = torch.tensor(sorted(set(hs)), device=W.device)
            if mode == "mean":
                z = means[hook_name("head", l)][hs_t.cpu()].to(W.device, W.dtype)   # [h, d_head]
                v.bias.add_(torch.einsum("hd,hdm->m", z, W[hs_t]))
            W[hs_t] = 0
    return box["record"]
