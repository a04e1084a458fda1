"""Specificity: what a deletion must leave alone.

Neighbour facts (the forget facts' subjects' other facts and other subjects'
facts of the same relation), a retain set, and the loss on general text.
Each is measured on the edited model and on the reference; `kept` is the
share of what the reference recalled that the edited model still recalls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from excise.facts import Fact
from excise.scoring import encode, pad_batch, recall_table


def neighbours_of(facts: Sequence[Fact]) -> list[Fact]:
    """The facts' neighbours that are not themselves among the facts (deduplicated)."""
    keys = {f.key for f in facts}
    out: dict[tuple[str, str], Fact] = {}
    for f in facts:
        for n in f.neighbors:
            if n.key not in keys:
                out.setdefault(n.key, n)
    return list(out.values())


def recalled(model: Any, facts: Sequence[Fact]) -> list[bool]:
    """Per fact: recalled (top-1) under its request prompt."""
    if not facts:
        return []
    return [r["recalled"] for r in recall_table(model, facts, ("request",)).rows]


def kept(reference: Sequence[bool], edited: Sequence[bool]) -> float | None:
    """Share of the facts the reference recalls that the edited model still recalls."""
    known = [e for r, e in zip(reference, edited, strict=True) if r]
    return sum(known) / len(known) if known else None


@torch.no_grad()
def general_loss(model: Any, texts: Sequence[str], batch_size: int = 64) -> float:
    """Mean next-token loss (nats per token) over `texts`."""
    if not texts:
        raise ValueError("general_loss needs at least one text")
    rows = encode(model, texts)
    pad = model.tokenizer.pad_token_id or 0
    device = next(iter(model.parameters())).device
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        tokens, last = pad_batch(rows[start:start + batch_size], pad)
        tokens = tokens.to(device)
        logp = model(tokens).float().log_softmax(-1)[:, :-1]
        tok = logp.gather(-1, tokens[:, 1:, None])[..., 0]
        mask = torch.arange(tok.shape[1], device=device)[None] < last.to(device)[:, None]
        total += float(-(tok * mask).sum())
        count += int(mask.sum())
    return total / count
