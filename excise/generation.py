"""Greedy decoding that excise controls, checked against a reference on every call.

Free-text metrics (TOFU's ROUGE-L) need the model's greedy answer. Going
through `transformers`' `generate` on the module a TransformerBridge wraps is
not safe: with transformers 5.24.0 the bridge's blocks and Hugging Face's
KV cache disagree, and `generate` (and the bridge's own cached decoding)
returns fluent-looking garbage for the TOFU organism while every
single-forward metric stays right. So:

- `greedy_uncached` is the reference: each step is one plain forward of the
  bridge over the whole sequence so far (right padding, which a causal model
  never sees from earlier positions). It uses nothing but `model(tokens)`,
  the same call every other metric in excise makes. Cost: one forward of the
  growing batch per new token.
- `greedy_cached` decodes with the KV cache through the bridge's documented
  entry point (`return_type="logits_and_cache"`, `past_key_values=`), left
  padded with an attention mask. Cost: one full forward, then one forward of
  a single position per new token.
- `greedy` runs the cached path and checks it, on the same call, against the
  reference on the most-padded prompt of the first batch; if the two
  disagree anywhere it warns, names the installed versions, and answers with
  the reference path. A broken upstream release therefore costs time, never
  correctness. `tests/test_generation.py` checks the two paths agree token for
  token on the organism, the TOFU organism and stories260k.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from excise.scoring import encode
from excise.weights import device_of

log = logging.getLogger(__name__)

__all__ = ["generated_sample", "greedy", "greedy_cached", "greedy_uncached"]


def _pad_id(model: Any) -> int:
    tok = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return 0 if pad is None else int(pad)


def _check_context(model: Any, rows: Sequence[Sequence[int]], max_new_tokens: int) -> None:
    n_ctx = getattr(model.cfg, "n_ctx", None)
    longest = max(len(r) for r in rows) + max_new_tokens
    if n_ctx is not None and longest > n_ctx:
        raise ValueError(f"a prompt plus {max_new_tokens} new tokens is {longest} tokens but the model's context is "
                         f"{n_ctx}; shorten the prompt or lower max_new_tokens")


def _cut(new: list[int], eos: int | None) -> list[int]:
    """The generated tokens up to, not including, the first EOS."""
    return new[: new.index(eos)] if eos is not None and eos in new else new


@torch.no_grad()
def greedy_uncached(model: Any, rows: Sequence[Sequence[int]], max_new_tokens: int,
                    eos_id: int | None = None) -> list[list[int]]:
    """Greedy continuation of each token row: one full forward per new token, no cache (the reference)."""
    if not rows:
        return []
    _check_context(model, rows, max_new_tokens)
    device, pad = device_of(model), _pad_id(model)
    seqs = [list(r) for r in rows]
    done = [False] * len(seqs)
    for _ in range(max_new_tokens):
        width = max(len(s) for s in seqs)
        tokens = torch.full((len(seqs), width), pad, dtype=torch.long)
        for i, s in enumerate(seqs):
            tokens[i, : len(s)] = torch.tensor(s)
        last = torch.tensor([len(s) - 1 for s in seqs])
        logits = model(tokens.to(device))[torch.arange(len(seqs)), last.to(device)]
        nxt = logits.argmax(-1).tolist()
        for i, t in enumerate(nxt):
            if not done[i]:
                seqs[i].append(int(t))
                done[i] = t == eos_id
        if all(done):
            break
    return [_cut(s[len(r):], eos_id) for s, r in zip(seqs, rows, strict=True)]


@torch.no_grad()
def greedy_cached(model: Any, rows: Sequence[Sequence[int]], max_new_tokens: int,
                  eos_id: int | None = None) -> list[list[int]]:
    """Greedy continuation of each token row with the KV cache (left padding, attention mask)."""
    if not rows:
        return []
    _check_context(model, rows, max_new_tokens)
    device, pad = device_of(model), _pad_id(model)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):                       # left padding: every row ends where decoding starts
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    ids, mask = ids.to(device), mask.to(device)
    logits, cache = model(ids, attention_mask=mask, return_type="logits_and_cache")
    out: list[list[int]] = [[] for _ in rows]
    done = torch.zeros(len(rows), dtype=torch.bool, device=device)
    for step in range(max_new_tokens):
        nxt = logits[:, -1].argmax(-1)
        for i, t in enumerate(nxt.tolist()):
            if not done[i]:
                out[i].append(int(t))
        if eos_id is not None:
            done |= nxt == eos_id
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits, cache = model(nxt[:, None], attention_mask=mask, past_key_values=cache,
                              return_type="logits_and_cache")
    return [_cut(o, eos_id) for o in out]


def _versions() -> str:
    from importlib.metadata import version

    return (f"torch {version('torch')}, transformers {version('transformers')}, "
            f"transformer-lens {version('transformer-lens')}")


def greedy(model: Any, prompts: Sequence[str], max_new_tokens: int, *, batch_size: int = 32,
           stop_at_eos: bool = True) -> list[list[int]]:
    """The greedy continuation's token ids of each prompt (BOS as the model prepends it), cut at EOS.

    Decodes with the KV cache and checks the cache against the uncached
    reference on the most-padded prompt of the first batch; on any
    disagreement it warns and decodes every prompt with the reference.
    Cost: per batch, one forward of the batch plus one single-position
    forward per new token, plus up to `max_new_tokens` forwards of one
    prompt for the check (the reference path instead: one forward of the
    whole batch per new token).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    rows = encode(model, prompts)
    if not rows:
        return []
    eos = model.tokenizer.eos_token_id if stop_at_eos else None
    first = rows[:batch_size]
    probe = min(range(len(first)), key=lambda i: len(first[i]))
    cached_first = greedy_cached(model, first, max_new_tokens, eos)
    if cached_first[probe] != greedy_uncached(model, [first[probe]], max_new_tokens, eos)[0]:
        warnings.warn(f"KV-cached decoding through the TransformerBridge disagrees with plain forwards ({_versions()}); "
                      "answering with the uncached reference, which is slower. Install the versions in "
                      "excise's constraints.txt to get the cached path back.", RuntimeWarning, stacklevel=2)
        return [o for b in range(0, len(rows), batch_size)
                for o in greedy_uncached(model, rows[b:b + batch_size], max_new_tokens, eos)]
    out = list(cached_first)
    for b in range(batch_size, len(rows), batch_size):
        out += greedy_cached(model, rows[b:b + batch_size], max_new_tokens, eos)
    return out


# Bump when the sampling below changes, so a sample kept in the cache by an older excise is not read back.
SAMPLER_VERSION = 1


def generated_sample(model: Any, n: int = 128, length: int = 48, seed: int = 0, temperature: float = 1.0,
                     batch_size: int = 32, cache: bool = True) -> list[str]:
    """`n` texts sampled from the model itself, from its BOS token, seeded; with `cache`, sampled once per model
    (its fingerprint) and settings, then read back (`excise.cache.derived`, folder "samples").

    A stand-in for the training text when none is at hand: the model's own
    samples follow the distribution it was trained on, which is what the key
    second moment should describe (for a small model trained on one corpus,
    such as stories260k, they are close; for a large general model, prefer
    real text from its domain).

    Returns up to `n` non-empty strings. Cost: `length` forwards per batch of
    `batch_size` (no KV cache: each forward reruns the whole prefix), so
    ceil(n / batch_size) * length forwards of up to `length` tokens; from the
    cache, a hash of the weights (remembered while they do not change).
    """
    if not cache:
        return _sample(model, n, length, seed, temperature, batch_size)
    from excise.cache import derived
    from excise.weights import model_fingerprint

    tok = model.tokenizer
    key = {"fingerprint": model_fingerprint(model), "tokenizer": [type(tok).__name__, len(tok)], "n": n,
           "length": length, "seed": seed, "temperature": temperature, "batch_size": batch_size,
           "sampler": SAMPLER_VERSION}
    return list(derived("samples", key, lambda: _sample(model, n, length, seed, temperature, batch_size)))


@torch.no_grad()
def _sample(model: Any, n: int, length: int, seed: int, temperature: float, batch_size: int) -> list[str]:
    tok = model.tokenizer
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if start is None:
        raise ValueError("generated_sample needs a BOS or EOS token to start from; pass real texts instead")
    device = device_of(model)
    gen = torch.Generator().manual_seed(seed)
    texts: list[str] = []
    for b in range(0, n, batch_size):
        ids = torch.full((min(batch_size, n - b), 1), start, dtype=torch.long, device=device)
        for _ in range(length):
            logits = model(ids)[:, -1].float().cpu() / temperature
            nxt = torch.multinomial(logits.softmax(-1), 1, generator=gen).to(device)
            ids = torch.cat([ids, nxt], dim=1)
        texts += [tok.decode(row[1:], skip_special_tokens=True).strip() for row in ids.tolist()]
    return [t for t in texts if t]
