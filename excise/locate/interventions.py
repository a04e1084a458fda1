"""The batched patching engine shared by causal tracing and activation patching.

A *plan* is one intervention: a list of `Restore`s (put the clean value of
one hook's activation back, at one position or all, for one head or neuron
or the whole vector). `run_plans` runs many plans x many noise samples as
rows of a few big forwards: row r carries plan r // n_samples with noise
sample r % n_samples, and each hook overwrites, with one `torch.where`, the
rows and cells its plans name. Hooks live only inside `model.hooks(...)`, so
an exception anywhere (a metric callback included) leaves the model clean.

Rows are grouped by the lowest block their plan restores in: the blocks
below it would compute exactly the corrupted run, so the group starts from
that run's residual there (when running the blocks by hand reproduces the
model, checked once per model; otherwise every row runs the whole forward),
and only the positions the metric reads are unembedded.

Cost: about ceil(rows per start block / batch_size) forwards per start block,
each through the blocks from there up.
"""

from __future__ import annotations

import re
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from excise.components import forward_keeping, hook_name
from excise.weights import device_of

Metric = Callable[[Float[Tensor, "batch pos vocab"]], Float[Tensor, " batch"]]

# How a hook's activation is cut into cells: a whole vector per position
# (resid/mlp/attn outputs), one cell per head ([.., head, d_head]), or one
# cell per unit of the last axis (MLP neurons).
GRAIN = {"vector", "head", "unit"}


@dataclass(frozen=True)
class Restore:
    """Put back the clean activation of `hook` at `position` (None: all) and `index` (None: all)."""

    hook: str
    grain: str = "vector"
    position: int | None = None
    index: int | None = None

    def __post_init__(self) -> None:
        if self.grain not in GRAIN:
            raise ValueError(f"grain must be one of {sorted(GRAIN)}, got {self.grain!r}")
        if self.grain == "vector" and self.index is not None:
            raise ValueError("a vector restore has no index")

    @property
    def layer(self) -> int | None:
        m = re.match(r"blocks\.(\d+)\.", self.hook)
        return int(m.group(1)) if m else None


def is_noop(plan: Sequence[Restore], first_diff: int, n_layers: int, read_at: int) -> bool:
    """True when restoring `plan` provably cannot change the metric.

    Two exact reasons, both from causality: a cell before `first_diff` (the
    first position where the corrupted input differs from the clean one)
    already holds its clean value; a cell of the last block at a position
    other than `read_at` (where the metric reads the logits) reaches the
    logits only at its own position.
    """
    for rs in plan:
        if rs.position is None:
            return False
        if rs.position < first_diff:
            continue
        if rs.layer == n_layers - 1 and rs.position != read_at:
            continue
        return False
    return True


def embedding_std(model: Any) -> float:
    """Standard deviation of every entry of W_E, the whole vocabulary (`noise_scale="vocabulary"`)."""
    return float(model.embed.W_E.detach().float().std())


def token_embedding_std(embeddings: Sequence[Float[Tensor, "_tokens d_model"]]) -> float:
    """Standard deviation of every entry of the stacked rows: one scalar, Bessel-corrected.

    ROME's noise unit (`collect_embedding_std` in kmeng01/rome's
    experiments/causal_trace.py): the rows are the token embeddings of each
    subject, one block per subject, repeats counted; the mean taken out is
    the single mean of all entries, not a per-dimension one.
    """
    if not embeddings:
        raise ValueError("no token embeddings to take a standard deviation over; pass at least one subject")
    return float(torch.cat([e.detach().float() for e in embeddings]).std())


def subject_embeddings(model: Any, subjects: Sequence[str]) -> list[Float[Tensor, "_tokens d_model"]]:
    """Each subject's token embeddings (the output of `model.embed`, where tracing adds its noise).

    A subject is tokenized alone, as its bare text and without BOS, as ROME
    tokenizes the subjects it takes the noise unit over. Cost: one embedding
    lookup per subject, no forward through the blocks.
    """
    if isinstance(subjects, str):
        raise TypeError(f"subjects must be a list of subject strings, got the string {subjects!r}; "
                        f"pass [{subjects!r}]")
    device = device_of(model)
    out = []
    with torch.no_grad():
        for subject in subjects:
            ids = model.to_tokens(subject, prepend_bos=False).to(device)    # [1, n]
            out.append(model.embed(ids)[0].detach())
    return out


def subject_noise(
    n_samples: int, n_pos: int, d_model: int, subject: tuple[int, int], scale: float, seed: int,
) -> Float[Tensor, "n_samples pos d_model"]:
    """Seeded Gaussian noise of std `scale` on the subject's positions, zero elsewhere."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    gen = torch.Generator().manual_seed(seed)
    noise = torch.zeros(n_samples, n_pos, d_model)
    start, end = subject
    noise[:, start:end] = scale * torch.randn(n_samples, end - start, d_model, generator=gen)
    return noise


def clean_states(model: Any, tokens: Int[Tensor, " pos"], hooks: set[str]) -> dict[str, Tensor]:
    """The activations at `hooks` of one run on `tokens` (no forward at all when `hooks` is empty)."""
    if not hooks:
        return {}
    with torch.no_grad():
        _, kept = forward_keeping(model, tokens[None], hooks)
    return {name: act[0].detach().clone() for name, act in kept.items()}


def _masks(plans: Sequence[Sequence[Restore]], rows: Sequence[int], clean: dict[str, Tensor],
           grains: dict[str, str]) -> dict[str, Tensor]:
    """Per hook, a boolean mask over (row, position[, head | unit]) of the cells to restore."""
    masks: dict[str, Tensor] = {}
    for hook, grain in grains.items():
        act = clean[hook]
        n_pos = act.shape[0]
        shape = {"vector": (len(rows), n_pos), "head": (len(rows), n_pos, act.shape[1]),
                 "unit": (len(rows), n_pos, act.shape[-1])}[grain]
        masks[hook] = torch.zeros(shape, dtype=torch.bool)
    for r, plan_id in enumerate(rows):
        for rs in plans[plan_id]:
            pos = slice(None) if rs.position is None else rs.position
            if rs.grain == "vector":
                masks[rs.hook][r, pos] = True
            else:
                idx = slice(None) if rs.index is None else rs.index
                masks[rs.hook][r, pos, idx] = True
    return masks


def run_plans(
    model: Any,
    tokens: Int[Tensor, " pos"],
    plans: Sequence[Sequence[Restore]],
    metric: Metric,
    *,
    clean_tokens: Int[Tensor, " pos"] | None = None,
    noise: Float[Tensor, "n_samples pos d_model"] | None = None,
    batch_size: int = 256,
    skip: Sequence[bool] | None = None,
    clean: dict[str, Tensor] | None = None,
) -> Float[Tensor, "n_plans n_samples"]:
    """Run every plan on the corrupted input and return the metric per plan and sample.

    The corrupted input is `tokens` with `noise` added to the token
    embeddings (causal tracing), or `tokens` itself when it differs from
    `clean_tokens` (a clean/corrupt prompt pair). Restored values come from
    one clean run on `clean_tokens` (default: `tokens` without noise).
    Plans flagged in `skip` (see `is_noop`) are not run: they get the
    corrupted run's value, which they provably equal. `clean`: clean
    activations already taken (`clean_states` on `clean_tokens`), so several
    calls share one clean run; hooks it lacks are run here.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    clean_tokens = tokens if clean_tokens is None else clean_tokens
    if clean_tokens.shape != tokens.shape:
        raise ValueError(
            f"clean and corrupt prompts must have the same number of tokens to patch "
            f"position by position; got {clean_tokens.shape[-1]} and {tokens.shape[-1]}. "
            "Choose a corrupt prompt whose subject has as many tokens."
        )
    n_samples = 1 if noise is None else noise.shape[0]
    grains: dict[str, str] = {}
    for plan in plans:
        for rs in plan:
            if grains.setdefault(rs.hook, rs.grain) != rs.grain:
                raise ValueError(f"hook {rs.hook} restored at two grains in one run")
    clean = dict(clean or {})
    clean |= clean_states(model, clean_tokens, set(grains) - set(clean))
    device = tokens.device
    skip = [False] * len(plans) if skip is None else list(skip)
    if len(skip) != len(plans):
        raise ValueError(f"skip has {len(skip)} flags for {len(plans)} plans")
    if any(skip):
        plans = [[] if sk else list(p) for p, sk in zip(plans, skip, strict=True)]
        live = [i for i, sk in enumerate(skip) if not sk]
        values = run_plans(model, tokens, [plans[i] for i in live] + [[]], metric,
                           clean_tokens=clean_tokens, noise=noise, batch_size=batch_size, clean=clean)
        out = values[-1:].expand(len(plans), -1).clone()       # the corrupted run's value
        out[live] = values[:-1]
        return out
    out = torch.empty(len(plans) * n_samples)
    all_rows = [(p, s) for p in range(len(plans)) for s in range(n_samples)]
    corrupted = _corrupted_residuals(model, tokens, noise) if _can_resume(model) else None
    first = [-1] * len(plans) if corrupted is None else [_first_block(p, model.cfg.n_layers) for p in plans]
    groups: dict[int, list[int]] = {}          # rows by the block they start at
    for i, (p, _) in enumerate(all_rows):
        groups.setdefault(first[p], []).append(i)
    for block, members in groups.items():
        for start in range(0, len(members), batch_size):
            idx = members[start:start + batch_size]
            chunk = [all_rows[i] for i in idx]
            values = _run_chunk(model, tokens, plans, chunk, metric, clean, grains, noise, block, corrupted)
            if values.shape != (len(chunk),):
                raise ValueError(f"metric must return one number per batch row, shape ({len(chunk)},); "
                                 f"got {tuple(values.shape)}")
            out[idx] = values.float().cpu()
    return out.view(len(plans), n_samples)


def _run_chunk(model: Any, tokens: Tensor, plans: Sequence[Sequence[Restore]], chunk: list[tuple[int, int]],
               metric: Metric, clean: dict[str, Tensor], grains: dict[str, str], noise: Tensor | None,
               block: int, corrupted: dict[int, Tensor] | None) -> Tensor:
    """The metric for rows (plan, noise sample), resuming at `block` from the corrupted run when it can."""
    device = tokens.device
    masks = {h: m.to(device) for h, m in _masks(plans, [p for p, _ in chunk], clean, grains).items()}
    hooks = [(h, _restorer(mask, clean[h], grains[h])) for h, mask in masks.items()]
    sample_ids = torch.tensor([s for _, s in chunk])
    with torch.no_grad():
        if block >= 0 and corrupted is not None:
            # blocks below `block` would compute exactly the corrupted run: start from its residual
            with model.hooks(fwd_hooks=hooks):
                return metric(_resume(model, corrupted[block][sample_ids.to(device)], block,
                                      getattr(metric, "positions", None)))
        if noise is not None:
            batch_noise = noise[sample_ids].to(device)

            def add_noise(act: Tensor, hook: Any) -> Tensor:
                return act + batch_noise.to(act.dtype)

            hooks.insert(0, ("hook_embed", add_noise))
        with model.hooks(fwd_hooks=hooks):
            return metric(model(tokens[None].expand(len(chunk), -1)))


def _first_block(plan: Sequence[Restore], n_layers: int) -> int:
    """The lowest block a plan restores in (n_layers: none; -1: a hook outside the blocks, run it all)."""
    layers = [rs.layer for rs in plan]
    if any(layer is None for layer in layers):
        return -1
    return min(layers, default=n_layers)


def _resume(model: Any, residual: Tensor, block: int, positions: Sequence[int] | None = None) -> Tensor:
    """Logits from the residual entering `block` (n_layers: the final residual), running the blocks above.

    With `positions` (the only ones the metric reads), the unembedding runs
    there alone and the other positions' logits are left zero.
    """
    for b in model.blocks[block:]:
        residual = b(residual)
        residual = residual[0] if isinstance(residual, tuple) else residual
    final = model.ln_final(residual)
    if positions is None:
        return model.unembed(final)
    at = torch.tensor(sorted(set(positions)), device=final.device)
    read = model.unembed(final[:, at])
    logits = read.new_zeros(final.shape[0], final.shape[1], read.shape[-1])
    logits[:, at] = read
    return logits


def _corrupted_residuals(model: Any, tokens: Tensor, noise: Tensor | None) -> dict[int, Tensor]:
    """Residual entering each block (and the final one, at n_layers) of the corrupted run, per noise sample."""
    n_layers = model.cfg.n_layers
    names = {hook_name("resid_pre", b): b for b in range(n_layers)} | {hook_name("resid", n_layers - 1): n_layers}
    store: dict[int, Tensor] = {}

    def keeper(block: int):  # by the requested name: an alias's hook.name is the canonical one
        def keep(act: Tensor, hook: Any) -> None:
            store[block] = act.detach()
        return keep

    n = 1 if noise is None else noise.shape[0]
    hooks = [(name, keeper(block)) for name, block in names.items()]
    if noise is not None:
        hooks.insert(0, ("hook_embed", lambda act, hook: act + noise.to(act.device, act.dtype)))
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        model(tokens[None].expand(n, -1))
    return store


_RESUMABLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _can_resume(model: Any) -> bool:
    """Whether running `model.blocks[k:]` by hand reproduces the model (checked once per model).

    True for GPT-2-style bridges; a block that needs more than the residual
    (rotary position embeddings passed in, as Llama's) fails the check and
    every row runs the whole forward.
    """
    if model not in _RESUMABLE:
        ok = False
        try:
            if all(hasattr(model, a) for a in ("blocks", "ln_final", "unembed")) and model.cfg.n_layers > 1:
                tokens = torch.arange(1, 6, device=device_of(model)) % model.cfg.d_vocab
                # a rotary block run by hand warns that RoPE was not applied: the failure this probe detects,
                # not one of the trace's (which then runs whole forwards)
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*RoPE was NOT applied")
                    full = model(tokens[None])
                    resumed = _resume(model, _corrupted_residuals(model, tokens, None)[1], 1)
                ok = resumed.shape == full.shape and bool(torch.allclose(resumed, full, atol=1e-5, rtol=1e-4))
        except Exception:  # noqa: BLE001 - any failure means: do not take the fast path
            ok = False
        _RESUMABLE[model] = ok
    return _RESUMABLE[model]


def _restorer(mask: Tensor, clean: Tensor, grain: str):
    cell_mask = mask[..., None] if grain in ("vector", "head") else mask

    def restore(act: Tensor, hook: Any) -> Tensor:
        return torch.where(cell_mask, clean.to(act.dtype)[None], act)

    return restore


def target_metric(position: int, target_id: int, kind: str = "prob") -> Metric:
    """Probability (or log-probability) of `target_id` at `position`."""
    if kind not in ("prob", "logprob"):
        raise ValueError(f"kind must be 'prob' or 'logprob', got {kind!r}")

    def metric(logits: Tensor) -> Tensor:
        logp = logits[:, position].float().log_softmax(-1)[:, target_id]
        return logp.exp() if kind == "prob" else logp

    metric.positions = (position,)      # type: ignore[attr-defined]  # the only logits it reads
    return metric


def logit_diff_metric(position: int, good_id: int, bad_id: int) -> Metric:
    """Logit of `good_id` minus logit of `bad_id` at `position`."""

    def metric(logits: Tensor) -> Tensor:
        return (logits[:, position, good_id] - logits[:, position, bad_id]).float()

    metric.positions = (position,)      # type: ignore[attr-defined]
    return metric
