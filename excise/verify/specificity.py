"""Specificity: what a deletion must leave alone.

Neighbour facts (the forget facts' subjects' other facts and other subjects'
facts of the same relation), a retain set, and the loss on general text.
Each is measured on the edited model and on the reference (`excise.scoring.recalled`,
`excise.scoring.general_loss`); `kept` is the share of what the reference recalled
that the edited model still recalls.
"""

from __future__ import annotations

from collections.abc import Sequence

from excise.facts import Fact


def neighbours_of(facts: Sequence[Fact]) -> list[Fact]:
    """The facts' neighbours that are not themselves among the facts (deduplicated)."""
    keys = {f.key for f in facts}
    out: dict[tuple[str, str], Fact] = {}
    for f in facts:
        for n in f.neighbors:
            if n.key not in keys:
                out.setdefault(n.key, n)
    return list(out.values())


def kept(reference: Sequence[bool], edited: Sequence[bool]) -> float | None:
    """Share of the facts the reference recalls that the edited model still recalls."""
    known = [e for r, e in zip(reference, edited, strict=True) if r]
    return sum(known) / len(known) if known else None
