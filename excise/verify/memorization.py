"""Teacher-forced memorization of the answers: exact memorization and extraction strength.

Both read, for each answer token, whether the model's top-1 prediction at that position (given the prompt and the
true answer tokens before it) is that token; open-unlearning computes them this way (src/evals/metrics/
memorization.py, `exact_memorization` and `extraction_strength`, at commit d3d7cf9 of locuslab/open-unlearning):

- exact memorization (EM): the share of the answer's tokens predicted exactly;
- extraction strength (ES, Carlini et al.'s): 1 - k / n, k the shortest prefix of the n-token answer after which
  every remaining token is predicted. open-unlearning's loop tries k = 0 .. n - 1 only, so an answer of which not
  even the last token is predicted scores 1 / n, the same as one whose last token alone is, and a one-token
  answer always scores 1. `extraction_strength` keeps that (reference=True); `reference=False` also tries k = n
  (nothing predicted: 0), the formula as written.

open-unlearning drops each answer's last labelled token (TOFU's answers end with the end-of-sequence token);
excise's answers carry none, so every answer token counts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

from excise.facts import Fact
from excise.scoring import answer_examples, pad_batch
from excise.weights import device_of

# while an audit runs the attacks on one model and one list of facts, the three memorization attacks share one
# forward (`shared_forwards`): {(id(model), facts, family): (model, matches)}; the model is held so its id stays its own
_SHARED: ContextVar[dict[tuple, tuple[Any, list[list[bool]]]] | None] = ContextVar("excise_matches", default=None)


@contextmanager
def shared_forwards() -> Iterator[None]:
    """Within the block, `greedy_matches` of the same model (object), facts and family is computed once. For a
    run of attacks that leave the model as it is (the audit's); outside it, every call runs its forward."""
    token = _SHARED.set({})
    try:
        yield
    finally:
        _SHARED.reset(token)


def greedy_matches(model: Any, facts: Sequence[Fact], family: str = "request", batch_size: int = 64
                   ) -> list[list[bool]]:
    """Per fact (its first template of `family`): per answer token, is it the model's top-1 prediction there,
    given the prompt and the answer's earlier tokens? Cost: one forward per `batch_size` facts (none when
    `shared_forwards` already has them)."""
    memo = _SHARED.get()
    key = (id(model), tuple((f.key, f.target, f.templates(family)[:1]) for f in facts), family)
    if memo is not None and key in memo:
        return [list(m) for m in memo[key][1]]
    out = _greedy_matches(model, facts, family, batch_size)
    if memo is not None:
        memo[key] = (model, [list(m) for m in out])
    return out


@torch.no_grad()
def _greedy_matches(model: Any, facts: Sequence[Fact], family: str, batch_size: int) -> list[list[bool]]:
    examples = []
    for f in facts:
        found = answer_examples(model, [f], (family,))
        if not found:
            raise ValueError(f"the fact {f.key} has no {family!r} template to read its answer after")
        examples.append(found[0])
    out: list[list[bool]] = []
    device = device_of(model)
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        ids, _ = pad_batch([e.ids for e in chunk], model.tokenizer.pad_token_id or 0)
        top = model(ids.to(device)).argmax(-1).cpu()
        for row, e in zip(top, chunk, strict=True):
            picked = row[e.start - 1:e.start - 1 + len(e.answer)].tolist()
            out.append([p == t for p, t in zip(picked, e.answer, strict=True)])
    return out


def exact_memorization(matches: Sequence[bool]) -> float:
    """The share of the answer's tokens predicted exactly (open-unlearning's EM)."""
    if not matches:
        raise ValueError("an answer of no tokens has no exact memorization")
    return sum(matches) / len(matches)


def extraction_strength(matches: Sequence[bool], reference: bool = True) -> float:
    """1 - k / n, k the shortest answer prefix after which every token is predicted (see the module docstring:
    `reference` keeps open-unlearning's k < n)."""
    n = len(matches)
    if not n:
        raise ValueError("an answer of no tokens has no extraction strength")
    k = next((k for k in range(n + (0 if reference else 1)) if all(matches[k:])), n - 1 if reference else n)
    return 1 - k / n
