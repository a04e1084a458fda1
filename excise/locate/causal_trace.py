"""Causal tracing (Meng et al. 2022, ROME, section 2.1).

Corrupt the subject: add Gaussian noise (`n_samples` seeded draws) to the
token embeddings of the subject's positions. Then restore the clean value of
one state at a time, the residual stream after a block, an MLP output or an
attention output (with an optional window of w consecutive layers for mlp
and attn), at one position, and read the probability of the target's first
token. States that bring the probability back are where the fact flows.

As ROME's reference code (kmeng01/rome, experiments/causal_trace.py) does it,
by default:
- noise std = 3 x sigma, sigma the standard deviation of every entry of the
  token embeddings of a list of subjects (`collect_embedding_std`, over the
  subjects of its known facts; each subject tokenized alone, no BOS).
  `subjects=` names the list; default: the traced fact's own subject.
  `noise_scale="vocabulary"` takes sigma over all of W_E instead (excise's
  earlier unit).
- a window of w layers centred on layer L restores layers
  [L - w//2, L + ceil(w/2)), cut off at 0 and at n_layers (fewer layers near
  either edge). `window_edge="shift"` keeps excise's earlier window, moved up
  near layer 0 to keep w layers (still cut off at the top).
- the noise goes on the token embeddings (`hook_embed`, before positions are
  added) of the subject's positions only, the same draws for every restored
  state. ROME draws them from numpy's RandomState(1); excise from a torch
  Generator seeded with `seed`, so the draws (not their law) differ.

Restorations run batched: all states x all noise samples are rows of a few
forwards (see `interventions.run_plans`). `trace_one_at_a_time` is the
reference, one forward per restored state, kept for tests and the benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from excise.components import hook_name
from excise.facts import Fact, tokenize_prompt
from excise.locate.interventions import (
    Restore,
    clean_states,
    embedding_std,
    is_noop,
    run_plans,
    subject_embeddings,
    subject_noise,
    target_metric,
    token_embedding_std,
)
from excise.locate.localization import Localization
from excise.weights import device_of

TRACE_KINDS = ("resid", "mlp", "attn")


NOISE_SCALES = ("subjects", "vocabulary")
WINDOW_EDGES = ("truncate", "shift")


@dataclass(frozen=True)
class TraceConfig:
    n_samples: int = 10        # ROME's published setting
    noise: float = 3.0         # in units of sigma below (ROME: 3 sigma, its "s3" noise level)
    # sigma: "subjects" = ROME's, the std of the token embeddings of the `subjects` passed to the trace
    # (default: the fact's own); "vocabulary" = the std of all of W_E (excise's earlier unit).
    # Measured on the organism (world.sample(10, seed=0), 3 sigma, 10 samples): sigma is 0.215 over all of
    # W_E, 0.098-0.149 over each fact's own subject (2-6 tokens), 0.123 over the 10 traced subjects, 0.131
    # over every subject of the world (6,234 tokens). Mean p_corrupt goes 0.090 (vocabulary) -> 0.165 (own)
    # / 0.130 (10) / 0.122 (world), the largest 0.33 -> 0.47, against p_clean 0.985-0.998: still a strong
    # corruption. The argmax MLP (layer, position) stays for 9/10 facts (own), 8/10 (10, world). So ROME's
    # unit is the default; pass every traced fact's subject to get one noise level for all of them.
    noise_scale: str = "subjects"
    window: int = 1            # layers restored together for mlp and attn (ROME's figures use 10 on GPT-2 XL)
    # near the first and last layers: "truncate" = ROME's, fewer layers; "shift" = excise's earlier window,
    # moved up near layer 0 to keep `window` layers (cut off at the top all the same); alike at window=1.
    window_edge: str = "truncate"
    seed: int = 0
    batch_size: int = 256      # rows (restored state x noise sample) per forward

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")
        if self.noise_scale not in NOISE_SCALES:
            raise ValueError(f"noise_scale must be one of {NOISE_SCALES} (\"subjects\": ROME's std of the "
                             f"subjects' token embeddings; \"vocabulary\": the std of all of W_E), "
                             f"got {self.noise_scale!r}")
        if self.window_edge not in WINDOW_EDGES:
            raise ValueError(f"window_edge must be one of {WINDOW_EDGES} (\"truncate\": ROME's window, cut off "
                             f"at the edges; \"shift\": moved up near layer 0 to keep `window` layers), "
                             f"got {self.window_edge!r}")

    @classmethod
    def resolve(cls, config: TraceConfig | None, overrides: dict[str, Any]) -> TraceConfig:
        """`config` (default settings if None) with keyword overrides applied."""
        config = config or cls()
        return cls(**{**config.__dict__, **overrides}) if overrides else config


@dataclass(frozen=True)
class TraceMeta:
    """What a causal trace records beside its scores (`Localization.meta` of `causal_trace`), typed.

    `TraceMeta.of(loc)` reads it from a trace's Localization (a saved one included).
    """

    fact: Fact                      # the traced fact (neighbours dropped)
    prompt: str                     # the filled-in prompt
    p_clean: float                  # p(target's first token) on the clean run
    p_corrupt: float                # the same with the subject noised and nothing restored (mean over samples)
    noise_std: float                # the noise's std: `config.noise` x noise_sigma
    noise_sigma: float              # the unit: std of the subjects' token embeddings (or of all of W_E)
    noise_sigma_tokens: int         # how many embedding rows the unit came from
    noise_sigma_subjects: int | None   # how many subjects (None: the whole vocabulary)
    last_position: int              # the prompt's last position (where the answer is read)
    config: TraceConfig             # the settings the trace ran with

    @classmethod
    def of(cls, loc: Localization) -> TraceMeta:
        if loc.method != "causal_trace":
            raise ValueError(f"TraceMeta reads causal traces; this Localization is from {loc.method!r}")
        m = loc.meta
        return cls(Fact.from_dict(m["fact"]), m["prompt"], m["p_clean"], m["p_corrupt"], m["noise_std"], m["noise_sigma"],
                   m["noise_sigma_tokens"], m["noise_sigma_subjects"], m["last_position"],
                   TraceConfig(**{k: m[k] for k in TraceConfig.__dataclass_fields__ if k in m}))


def check_kinds(kinds: Sequence[str], allowed: Sequence[str], method: str) -> None:
    if isinstance(kinds, str) or not isinstance(kinds, Sequence):
        raise TypeError(f"{method} kinds must be a list of kinds among {tuple(allowed)}, got "
                        f"{type(kinds).__name__}; pass a config by keyword: {method}(model, fact, config=...)")
    bad = [k for k in kinds if k not in allowed]
    if bad or not kinds:
        raise ValueError(f"{method} kinds must be among {tuple(allowed)}; got {list(kinds)}")


def window_layers(layer: int, window: int, n_layers: int, edge: str = "truncate") -> range:
    """The layers restored together for a window of `window` layers at `layer`.

    "truncate" (ROME's `trace_important_window`): [layer - window//2,
    layer + ceil(window/2)) cut to [0, n_layers), so fewer layers near
    either edge. "shift": the same start cut at 0, then `window` layers from
    there (cut at n_layers), so near layer 0 the window moves up instead.
    """
    if edge not in WINDOW_EDGES:
        raise ValueError(f"edge must be one of {WINDOW_EDGES}, got {edge!r}")
    lo = max(0, layer - window // 2)
    hi = layer + (window + 1) // 2 if edge == "truncate" else lo + window
    return range(lo, min(n_layers, hi))


def trace_plans(kind: str, n_layers: int, n_pos: int, window: int,
                edge: str = "truncate") -> list[list[Restore]]:
    """One plan per (layer, position) of `kind`, in row-major order."""
    w = 1 if kind == "resid" else window
    return [[Restore(hook_name(kind, l2), "vector", pos) for l2 in window_layers(layer, w, n_layers, edge)]
            for layer in range(n_layers) for pos in range(n_pos)]


def noise_std(model: Any, config: TraceConfig, subjects: Sequence[str]) -> tuple[float, dict[str, Any]]:
    """The std of the subject noise, `config.noise` x sigma, and what sigma was measured over.

    The dict goes into `Localization.meta`: sigma itself (`noise_sigma`), the
    number of embedding rows it came from (`noise_sigma_tokens`: the
    subjects' tokens, repeats counted, or the vocabulary) and of subjects.
    """
    if config.noise_scale == "vocabulary":
        sigma = embedding_std(model)
        info = {"noise_sigma_tokens": int(model.embed.W_E.shape[0]), "noise_sigma_subjects": None}
    else:
        if isinstance(subjects, str) or not subjects:
            raise ValueError(f"noise_scale='subjects' needs a non-empty list of subjects, got {subjects!r}; "
                             "pass subjects=[...] (or None for the traced fact's own)")
        rows = subject_embeddings(model, subjects)
        sigma = token_embedding_std(rows)
        info = {"noise_sigma_tokens": sum(len(r) for r in rows), "noise_sigma_subjects": len(subjects)}
    return config.noise * sigma, {"noise_std": config.noise * sigma, "noise_sigma": sigma, **info}


def causal_trace(
    model: Any, fact: Fact, kinds: Sequence[str] = TRACE_KINDS, template: str | None = None,
    config: TraceConfig | None = None, subjects: Sequence[str] | None = None, **overrides: Any,
) -> Localization:
    """Trace where `fact` flows; returns a Localization of the restored target probability per (kind, layer, position).

    `subjects`: the subjects whose token embeddings set the noise unit
    (`noise_scale="subjects"`, ROME's); default: `[fact.subject]`. When
    tracing many facts, pass all their subjects, as ROME does with its list
    of known facts, so that every trace gets the same noise.

    Cost: at most ceil(len(kinds) * n_layers * n_pos * n_samples / batch_size)
    forwards plus two (clean, corrupted baseline); states that provably cannot
    matter (before the subject, or in the last block off the last position)
    are not run (see `interventions.is_noop`). Memory: one batch of
    activations plus the clean states of every traced hook.
    """
    config = TraceConfig.resolve(config, overrides)
    check_kinds(kinds, TRACE_KINDS, "causal_trace")
    setup = _setup(model, fact, template, config, subjects)
    tokens, last, metric, noise = setup["tokens"], setup["last"], setup["metric"], setup["noise"]
    n_layers, n_pos = model.cfg.n_layers, tokens.shape[0]

    plans = {kind: trace_plans(kind, n_layers, n_pos, config.window, config.window_edge) for kind in kinds}
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
              **setup["noise_info"], "last_position": last, **config.__dict__},
    )


def _setup(model: Any, fact: Fact, template: str | None, config: TraceConfig,
           subjects: Sequence[str] | None) -> dict[str, Any]:
    pt = tokenize_prompt(model, fact, template)
    device = device_of(model)
    tokens = pt.tokens.to(device)
    last = tokens.shape[0] - 1
    std, info = noise_std(model, config, [fact.subject] if subjects is None else subjects)
    noise = subject_noise(config.n_samples, tokens.shape[0], model.cfg.d_model, pt.subject, std, config.seed)
    labels = [model.tokenizer.decode([t]) for t in pt.tokens.tolist()]
    return {"tokens": tokens, "last": last, "noise": noise, "noise_info": info, "labels": labels,
            "subject": pt.subject, "text": pt.text,
            "metric": target_metric(last, pt.target_ids[0], "prob")}


def trace_one_at_a_time(
    model: Any, fact: Fact, kinds: Sequence[str] = TRACE_KINDS, template: str | None = None,
    config: TraceConfig | None = None, subjects: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Reference: the same trace as `causal_trace`, one `run_with_hooks` per restored state.

    Each forward carries the n_samples noise draws of one state; the clean
    states come from one `run_with_cache`. Slow by design: returns {kind:
    [n_layers, n_pos] restored probabilities} at the cost of len(kinds) *
    n_layers * n_pos forwards of batch n_samples, one per state (tests only).
    """
    config = config or TraceConfig()
    setup = _setup(model, fact, template, config, subjects)
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
                for l2 in window_layers(layer, w, n_layers, config.window_edge):
                    name = hook_name(kind, l2)
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
