"""Sequential requests: deletions applied one after another, each with its own record.

Real erasure requests arrive over time; every edit lands on the model the
previous ones left, and the damage compounds. `sequence` applies them in
order, calls `after_each(i, record)` (e.g. to measure retain recall every 10
requests), and returns the records; `Sequence.undo()` reverts all of them,
last first, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from excise.edit.record import EditRecord
from excise.facts import Fact


@dataclass
class EditSequence:
    records: list[EditRecord] = field(default_factory=list)
    measurements: list[dict[str, Any]] = field(default_factory=list)

    def undo(self, model: Any = None) -> None:
        """Revert every edit, the last one first."""
        for record in reversed(self.records):
            record.undo(model)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"EditSequence({len(self.records)} edits, {len(self.measurements)} measurements)"


def sequence(
    model: Any, facts: Iterable[Fact], edit: Callable[[Any, Fact], EditRecord],
    after_each: Callable[[int, EditRecord], dict[str, Any] | None] | None = None, progress: bool = True,
) -> EditSequence:
    """Apply `edit(model, fact)` for each fact in order. If an edit fails, that edit has
    already restored its own weights; the earlier ones stay applied and are in the
    exception's `sequence` attribute, so the caller can undo them."""
    out = EditSequence()
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
