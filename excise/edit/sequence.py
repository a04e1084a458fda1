"""Sequential requests: deletions applied one after another, each with its own record.

Real erasure requests arrive over time; every edit lands on the model the
previous ones left, and the damage compounds. `sequence` applies them in
order, calls `after_each(i, record)` (e.g. to measure retain recall every 10
requests), and returns the records; `Sequence.undo()` reverts all of them,
last first, bit for bit.

An edit that carries state between requests (sequential AlphaEdit's
`AlphaEditState`: its cache holds every earlier edit's keys) is passed as
`state=`; `undo()` then reverts each record through `state.undo(record)`, so
the state's cache loses each edit's keys as its weights are restored
(`excise.edit.memit.memit_sequence` builds both).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from tqdm.auto import tqdm

from excise.edit.record import EditRecord
from excise.facts import Fact


@runtime_checkable
class EditState(Protocol):
    """State an edit method carries across requests; it must be told when one of its edits is undone."""

    def undo(self, record: EditRecord, model: Any = None) -> None: ...


@dataclass
class EditSequence:
    records: list[EditRecord] = field(default_factory=list)
    measurements: list[dict[str, Any]] = field(default_factory=list)
    state: EditState | None = field(default=None, repr=False)

    def undo(self, model: Any = None) -> None:
        """Revert every edit, the last one first (through the state, when there is one)."""
        for record in reversed(self.records):
            if self.state is not None:
                self.state.undo(record, model)
            else:
                record.undo(model)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"EditSequence({len(self.records)} edits, {len(self.measurements)} measurements)"


def sequence(
    model: Any, facts: Iterable[Fact], edit: Callable[[Any, Fact], EditRecord],
    after_each: Callable[[int, EditRecord], dict[str, Any] | None] | None = None, progress: bool = True,
    state: EditState | None = None,
) -> EditSequence:
    """Apply `edit(model, fact)` for each fact in order. If an edit fails, that edit has
    already restored its own weights; the earlier ones stay applied and are in the
    exception's `sequence` attribute, so the caller can undo them. `state`: what `edit`
    carries between requests (see the module docstring), used by `undo()`.

    Returns an EditSequence (its records in order, and `after_each`'s measurements).
    Cost: the sum of the edits' costs, plus `after_each`'s.
    """
    out = EditSequence(state=state)
    facts = list(facts)
    for i, fact in enumerate(tqdm(facts, desc="sequential edits", disable=not progress)):
        try:
            record = edit(model, fact)
        except Exception as e:
            e.sequence = out        # type: ignore[attr-defined]
            raise
        out.records.append(record)
        if after_each is not None:
            measured = after_each(i, record)
            if measured:
                out.measurements.append({"after": i + 1, **measured})
    return out
