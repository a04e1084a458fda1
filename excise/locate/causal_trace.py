"""Causal tracing (Meng et al. 2022, ROME, section 2.1).

Corrupt the subject: add Gaussian noise (default 3x the token-embedding
standard deviation, `n_samples` seeded draws) to the embeddings of the
subject's tokens. Then restore the clean value of one state at a time, the
residual stream after a block, an MLP output or an attention output (with an
optional window of w consecutive layers for mlp and attn), at one position,
and read the probability of the target's first token. States that bring the
probability back are where the fact flows.

Restorations run batched: all states x all noise samples are rows of a few
forwards (see `interventions.run_plans`). `trace_one_at_a_time` is the
reference, one forward per restored state, kept for tests and the benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from excise.components import Component
from excise.facts import Fact, tokenize_prompt
from excise.locate.interventions import (
    Restore, clean_states, embedding_std, is_noop, run_plans, subject_noise, target_metric,
)
from excise.locate.localization import Localization

TRACE_KINDS = ("resid", "mlp", "attn")


@dataclass(frozen=True)
class TraceConfig:
    n_samples: int = 10        # ROME's published setting
    noise: float = 3.0         # in units of the token-embedding std (ROME: 3 sigma)
    window: int = 1            # layers restored together for mlp and attn (ROME's figures use 10 on GPT-2 XL)
    seed: int = 0
    batch_size: int = 256      # rows (restored state x noise sample) per forward

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")

    @classmethod
    def resolve(cls, config: TraceConfig | None, overrides: dict[str, Any]) -> TraceConfig:
        """`config` (default settings if None) with keyword overrides applied."""
        config = config or cls()
        return cls(**{**config.__dict__, **overrides}) if overrides else config


def check_kinds(kinds: Sequence[str], allowed: Sequence[str], method: str) -> None:
    if isinstance(kinds, str) or not isinstance(kinds, Sequence):
        raise TypeError(f"{method} kinds must be a list of kinds among {tuple(allowed)}, got "
                        f"{type(kinds).__name__}; pass a config by keyword: {method}(model, fact, config=...)")
    bad = [k for k in kinds if k not in allowed]
    if bad or not kinds:
        raise ValueError(f"{method} kinds must be among {tuple(allowed)}; got {list(kinds)}")


def _window(layer: int, window: int, n_layers: int) -> range:
    lo = max(0, layer - window // 2)
    return range(lo, min(n_layers, lo + window))


def trace_plans(kind: str, n_layers: int, n_pos: int, window: int) -> list[list[Restore]]:
    """One plan per (layer, position) of `kind`, in row-major order."""
    hook = Component(0, kind).hook_name.replace("blocks.0.", "blocks.{}.")
    w = 1 if kind == "resid" else window
    return [[Restore(hook.format(l2), "vector", pos) for l2 in _window(layer, w, n_layers)]
            for layer in range(n_layers) for pos in range(n_pos)]


def causal_trace(
    model: Any, fact: Fact, kinds: Sequence[str] = TRACE_KINDS, template: str | None = None,
    config: TraceConfig | None = None, **overrides: Any,
) -> Localization:
    """Trace where `fact` flows: restored target probability per (kind, layer, position).

    Cost: at most ceil(len(kinds) * n_layers * n_pos * n_samples / batch_size)
    forwards plus two (clean, corrupted baseline); states that provably cannot
    matter (before the subject, or in the last block off the last position)
    are not run (see `interventions.is_noop`).
    """
    config = TraceConfig.resolve(config, overrides)
    check_kinds(kinds, TRACE_KINDS, "causal_trace")
    setup = _setup(model, fact, template, config)
    tokens, last, metric, noise = setup["tokens"], setup["last"], setup["metric"], setup["noise"]
    n_layers, n_pos = model.cfg.n_layers, tokens.shape[0]

    plans = {kind: trace_plans(kind, n_layers, n_pos, config.window) for kind in kinds}
    states = clean_states(model, tokens, {rs.hook for ps in plans.values() for p in ps for rs in p})
    clean = run_plans(model, tokens, [[]], metric, batch_size=config.batch_size)
    # every kind's plans, and the corrupted baseline (no restore, a no-op: run_plans gives it the corrupted
    # run's value) last, in one run: fewer, fuller batches
    every = [p for kind in kinds for p in plans[kind]] + [[]]
    skip = [is_noop(p, setup["subject"][0], n_layers, last) for p in every]
    probs = run_plans(model, tokens, every, metric, noise=noise, batch_size=config.batch_size, skip=skip,
                      clean=states).mean(dim=1)
    base = probs[-1:]
    scores = {kind: probs[i * n_layers * n_pos:(i + 1) * n_layers * n_pos].view(n_layers, n_pos)
              for i, kind in enumerate(kinds)}
    return Localization(
        method="causal_trace", scores=scores, axes={k: ("layer", "position") for k in kinds},
        tokens=setup["labels"], subject=setup["subject"],
        meta={"fact": fact.to_dict() | {"neighbors": []}, "prompt": setup["text"],
              "score": "restored probability of the target's first token",
              "p_clean": float(clean.mean()), "p_corrupt": float(base.mean()),
              "noise_std": setup["noise_std"], "last_position": last, **config.__dict__},
    )


def _setup(model: Any, fact: Fact, template: str | None, config: TraceConfig) -> dict[str, Any]:
    pt = tokenize_prompt(model, fact, template)
    device = next(iter(model.parameters())).device
    tokens = pt.tokens.to(device)
    last = tokens.shape[0] - 1
    std = config.noise * embedding_std(model)
    noise = subject_noise(config.n_samples, tokens.shape[0], model.cfg.d_model, pt.subject, std, config.seed)
    labels = [model.tokenizer.decode([t]) for t in pt.tokens.tolist()]
    return {"tokens": tokens, "last": last, "noise": noise, "noise_std": std, "labels": labels,
            "subject": pt.subject, "text": pt.text,
            "metric": target_metric(last, pt.target_ids[0], "prob")}


def trace_one_at_a_time(
    model: Any, fact: Fact, kinds: Sequence[str] = TRACE_KINDS, template: str | None = None,
    config: TraceConfig | None = None,
) -> dict[str, torch.Tensor]:
    """Reference: the same trace as `causal_trace`, one `run_with_hooks` per restored state.

    Each forward carries the n_samples noise draws of one state; the clean
    states come from one `run_with_cache`. Slow by design.
    """
    config = config or TraceConfig()
    setup = _setup(model, fact, template, config)
    tokens, metric, noise = setup["tokens"], setup["metric"], setup["noise"]
    n_layers, n_pos = model.cfg.n_layers, tokens.shape[0]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[None])
    batch = tokens[None].expand(config.n_samples, -1)

    def add_noise(act, hook):
        return act + noise.to(act.device, act.dtype)

    out = {}
    for kind in kinds:
        grid = torch.empty(n_layers, n_pos)
        for layer in range(n_layers):
            for pos in range(n_pos):
                hooks = [("hook_embed", add_noise)]
                w = 1 if kind == "resid" else config.window
                for l2 in _window(layer, w, n_layers):
                    name = Component(l2, kind).hook_name
                    clean = cache[name][0, pos]

                    def put(act, hook, clean=clean, pos=pos):
                        act = act.clone()
                        act[:, pos] = clean
                        return act

                    hooks.append((name, put))
                with torch.no_grad():
                    logits = model.run_with_hooks(batch, fwd_hooks=hooks)
                grid[layer, pos] = metric(logits).mean()
        out[kind] = grid
    return out
