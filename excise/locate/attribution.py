"""Attribution patching: the first-order estimate of activation patching.

effect(cell) ~ (a_clean - a_corrupt) . d metric / d a, at the corrupted run
(the denoising convention), for every head and every MLP neuron at every
position, from one clean forward, one corrupted forward and one backward.

Built on TransformerLens 4's `tools.analysis.attribution_patching`: its
`cache_activation_and_gradient` captures activations and gradients at any
hook. Its `attribution_patch` itself is not used, because it scores only
whole-MLP and head nodes (no neurons), takes a single clean/corrupt token pair
(no noised-subject corruption with several samples), and needs a scalar
metric per pair; here the N noise samples are one batch whose metric is their
mean, so the per-sample attributions sum to the mean patching effect's
estimate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformer_lens.tools.analysis.attribution_patching import cache_activation_and_gradient

from excise.components import head_axis
from excise.facts import Fact, tokenize_prompt
from excise.locate.causal_trace import TraceConfig, check_kinds, noise_std
from excise.locate.interventions import subject_noise
from excise.locate.localization import Localization
from excise.weights import device_of

ATTRIBUTION_KINDS = ("resid", "mlp", "attn", "head", "neuron")
_HOOK = {"resid": "blocks.{}.hook_resid_post", "mlp": "blocks.{}.hook_mlp_out",
         "attn": "blocks.{}.hook_attn_out", "head": "blocks.{}.attn.hook_z",
         "neuron": "blocks.{}.mlp.hook_post"}


def attribution_patching(
    model: Any, fact: Fact, kinds: Sequence[str] = ("head", "neuron"), *,
    corrupt: Fact | None = None, template: str | None = None, per_position: bool = False,
    neuron_position: int | None = None, config: TraceConfig | None = None,
    subjects: Sequence[str] | None = None, **overrides: Any,
) -> Localization:
    """Estimated patching effect of every component, from one backward; returns a Localization.

    Scores match `activation_patching`'s (effect on the target log-prob under
    noise, or the logit difference for a corrupt prompt): neurons at
    `neuron_position` (default last subject token) unless `per_position`,
    heads summed over positions unless `per_position`; resid/mlp/attn per
    (layer, position). `subjects`: the subjects whose token embeddings set
    the noise unit, as in `causal_trace` (default: `[fact.subject]`).
    Cost: 2 forwards (batch 1 and n_samples) + 1 backward.
    """
    config = TraceConfig.resolve(config, overrides)
    check_kinds(kinds, ATTRIBUTION_KINDS, "attribution_patching")
    pt = tokenize_prompt(model, fact, template)
    device = device_of(model)
    clean_tokens = pt.tokens.to(device)
    n_layers, n_pos, last = model.cfg.n_layers, clean_tokens.shape[0], clean_tokens.shape[0] - 1
    target = pt.target_ids[0]
    # hook_embed first: TransformerLens's capture reads the most-upstream point's
    # gradient off autograd's return, which a converted point (attn.hook_z) lacks.
    names = ["hook_embed"] + [_HOOK[k].format(l) for k in kinds for l in range(n_layers)]

    noise_info: dict[str, Any] = {}
    if corrupt is None:
        std, noise_info = noise_std(model, config, [fact.subject] if subjects is None else subjects)
        noise = subject_noise(config.n_samples, n_pos, model.cfg.d_model, pt.subject, std, config.seed).to(device)
        corrupt_tokens = clean_tokens[None].expand(config.n_samples, -1)
        outer = [("hook_embed", lambda act, hook: act + noise.to(act.dtype))]

        def metric(logits: torch.Tensor) -> torch.Tensor:
            return logits[:, last].float().log_softmax(-1)[:, target].mean()
    else:
        cpt = tokenize_prompt(model, corrupt, template)
        if cpt.tokens.shape != pt.tokens.shape:
            raise ValueError(f"clean prompt {pt.text!r} and corrupt prompt {cpt.text!r} differ in "
                             "length; pick a corrupt subject with as many tokens")
        corrupt_tokens = cpt.tokens.to(device)[None]
        outer = []
        bad_id = cpt.target_ids[0]

        def metric(logits: torch.Tensor) -> torch.Tensor:
            if bad_id == target:
                return logits[:, last].float().log_softmax(-1)[:, target].mean()
            return (logits[:, last, target] - logits[:, last, bad_id]).float().mean()

    clean = cache_activation_and_gradient(model, clean_tokens[None], metric, names, compute_gradient=False)
    with torch.enable_grad(), model.hooks(fwd_hooks=outer):
        corr = cache_activation_and_gradient(model, corrupt_tokens, metric, names)
    position = pt.last_subject if neuron_position is None else neuron_position
    scores, axes = {}, {}
    for kind in kinds:
        per_layer = []
        for l in range(n_layers):
            name = _HOOK[kind].format(l)
            grad = corr.gradients.get(name)
            if grad is None:
                raise RuntimeError(f"no gradient reached {name}; is the model in eval mode with "
                                   "parameters that require grad?")
            delta = clean.activations[name] - corr.activations[name]    # [n, pos, ...]
            per_layer.append((delta * grad).sum(0))                     # sum over noise samples
        stacked = torch.stack(per_layer)                                 # [layer, pos, ...]
        if kind in ("resid", "mlp", "attn"):
            scores[kind], axes[kind] = stacked.sum(-1), ("layer", "position")
        elif kind == "head":
            per_head = stacked.sum(-1)                                   # [layer, pos, head]
            if per_position:
                scores[kind], axes[kind] = per_head, ("layer", "position", "index")
            else:
                scores[kind], axes[kind] = per_head.sum(1), ("layer", "index")
        elif per_position:
            scores[kind], axes[kind] = stacked, ("layer", "position", "index")
        else:
            scores[kind], axes[kind] = stacked[:, position], ("layer", "index")
    labels = [model.tokenizer.decode([t]) for t in pt.tokens.tolist()]
    return Localization(
        method="attribution_patching", scores=scores, axes=axes, tokens=labels, subject=pt.subject,
        meta={"fact": fact.to_dict() | {"neighbors": []}, "prompt": pt.text,
              "score": "first-order estimate of metric(patched) - metric(corrupted)",
              "metric_clean": float(clean.metric), "metric_corrupt": float(corr.metric),
              "neuron_position": position, **noise_info, **config.__dict__, **head_axis(model.cfg)},
    )
