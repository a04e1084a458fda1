"""Activation patching at every granularity.

Run the corrupted input (the noised subject, or a corrupt prompt of the same
length), put back one clean activation, and measure a metric. Granularities:
- `resid`, `mlp`, `attn`: one (layer, position);
- `head`: one attention head of a layer, at all positions, or per position
  with `head_positions=True`;
- `neuron`: one MLP neuron of a layer at one position (default: the last
  subject token, where ROME finds facts recalled).

Scores are the *effect*: patched metric minus corrupted metric, averaged over
noise samples, so patching a clean run into itself scores exactly zero.
Cost: ceil(n_plans * n_samples / batch_size) forwards; neurons dominate
(n_layers * d_mlp plans).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from excise.components import head_axis, hook_name
from excise.facts import Fact, tokenize_prompt
from excise.locate.causal_trace import TraceConfig, check_kinds, noise_std, trace_plans
from excise.locate.interventions import (
    Metric,
    Restore,
    is_noop,
    logit_diff_metric,
    run_plans,
    subject_noise,
    target_metric,
)
from excise.locate.localization import Localization
from excise.weights import device_of

PATCH_KINDS = ("resid", "mlp", "attn", "head", "neuron")


def activation_patching(
    model: Any, fact: Fact, kinds: Sequence[str] = ("resid", "mlp", "attn", "head"), *,
    corrupt: Fact | None = None, template: str | None = None, metric: Metric | None = None,
    head_positions: bool = False, neuron_position: int | None = None,
    layers: Sequence[int] | None = None, config: TraceConfig | None = None,
    subjects: Sequence[str] | None = None, **overrides: Any,
) -> Localization:
    """Patch clean activations into the corrupted run, one component at a time.

    `corrupt`: a Fact whose prompt (same template) has as many tokens, for a
    clean/corrupt pair; default: noise on the subject (causal tracing's
    corruption). `metric(logits[batch, pos, vocab]) -> [batch]`; default: the
    logit difference clean target - corrupt target for a pair, the target's
    log-probability under noise. `layers` restricts head and neuron patching
    (n_layers * d_mlp plans for neurons) to those layers; their scores are NaN
    elsewhere. `subjects`: the subjects whose token embeddings set the noise
    unit, as in `causal_trace` (default: `[fact.subject]`).

    Returns a Localization: metric(patched) - metric(corrupted) per (layer,
    position) for resid/mlp/attn, per (layer, head) for heads, per (layer,
    neuron) for neurons. Cost: ceil(P * n_samples / batch_size) forwards,
    P = n_layers * n_pos per resid/mlp/attn kind, + len(layers) * n_heads
    (x n_pos with head_positions) for heads, + len(layers) * d_mlp for
    neurons; memory: one batch of activations plus the clean run's cache.
    """
    config = TraceConfig.resolve(config, overrides)
    check_kinds(kinds, PATCH_KINDS, "activation_patching")
    pt = tokenize_prompt(model, fact, template)
    device = device_of(model)
    clean_tokens = pt.tokens.to(device)
    last = clean_tokens.shape[0] - 1
    n_layers, n_pos = model.cfg.n_layers, clean_tokens.shape[0]
    noise = None
    corruption = "noise on the subject"
    noise_info: dict[str, Any] = {}
    if corrupt is None:
        tokens = clean_tokens
        std, noise_info = noise_std(model, config, [fact.subject] if subjects is None else subjects)
        noise = subject_noise(config.n_samples, n_pos, model.cfg.d_model, pt.subject, std, config.seed)
        default_metric = target_metric(last, pt.target_ids[0], "logprob")
    else:
        cpt = tokenize_prompt(model, corrupt, template)
        tokens = cpt.tokens.to(device)
        corruption = f"prompt: {cpt.text}"
        if tokens.shape != clean_tokens.shape:
            raise ValueError(
                f"clean prompt {pt.text!r} has {n_pos} tokens but corrupt prompt {cpt.text!r} has "
                f"{tokens.shape[0]}; patching position by position needs equal lengths. Pick a "
                "corrupt subject with as many tokens."
            )
        if cpt.target_ids[0] != pt.target_ids[0]:
            default_metric = logit_diff_metric(last, pt.target_ids[0], cpt.target_ids[0])
        else:
            default_metric = target_metric(last, pt.target_ids[0], "logprob")
    metric = metric or default_metric
    position = pt.last_subject if neuron_position is None else neuron_position
    if not 0 <= position < n_pos:
        raise ValueError(f"neuron_position {position} is outside the prompt's {n_pos} tokens "
                         f"(0..{n_pos - 1})")
    layers = list(range(n_layers)) if layers is None else list(layers)
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer} is out of range: the model has {n_layers} layers "
                             f"(0..{n_layers - 1})")
    if noise is not None:
        first_diff = pt.subject[0]
    else:
        differs = (tokens != clean_tokens).nonzero()
        first_diff = int(differs[0, 0]) if len(differs) else n_pos

    def run(plans):
        skip = [is_noop(p, first_diff, n_layers, last) for p in plans]
        return run_plans(model, tokens, plans, metric, clean_tokens=clean_tokens, noise=noise,
                         batch_size=config.batch_size, skip=skip).mean(dim=1)

    def per_layer(plans_for_layer, shape):
        """Scores [n_layers, *shape], NaN for layers not asked for."""
        out = torch.full((n_layers, *shape), float("nan"))
        plans = [p for l in layers for p in plans_for_layer(l)]
        if plans:
            out[layers] = run(plans).view(len(layers), *shape)
        return out

    baseline = float(run([[]])[0])
    clean_value = float(run_plans(model, clean_tokens, [[]], metric, batch_size=config.batch_size)[0, 0])
    scores, axes = {}, {}
    for kind in kinds:
        if kind in ("resid", "mlp", "attn"):
            values = run(trace_plans(kind, n_layers, n_pos, window=1)).view(n_layers, n_pos)
            axes[kind] = ("layer", "position")
        elif kind == "head":
            H = model.cfg.n_heads
            pos_list = list(range(n_pos)) if head_positions else [None]
            values = per_layer(lambda l: [[Restore(hook_name("head", l), "head", p, h)]
                                          for p in pos_list for h in range(H)],
                               (n_pos, H) if head_positions else (H,))
            axes[kind] = ("layer", "position", "index") if head_positions else ("layer", "index")
        else:
            values = per_layer(lambda l: [[Restore(hook_name("neuron", l), "unit", position, n)]
                                          for n in range(model.cfg.d_mlp)], (model.cfg.d_mlp,))
            axes[kind] = ("layer", "index")
        scores[kind] = values - baseline
    labels = [model.tokenizer.decode([t]) for t in pt.tokens.tolist()]
    return Localization(
        method="activation_patching", scores=scores, axes=axes, tokens=labels, subject=pt.subject,
        meta={"fact": fact.to_dict() | {"neighbors": []}, "prompt": pt.text,
              "corruption": corruption,
              "score": "metric(patched) - metric(corrupted)", "metric_clean": clean_value,
              "metric_corrupt": baseline, "neuron_position": position, **noise_info, **config.__dict__,
              **head_axis(model.cfg)},
    )
