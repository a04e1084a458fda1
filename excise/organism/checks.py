"""The organism's recall table: how well a checkpoint knows its world.

Measured through `excise.load(path)` (the TransformerBridge every user gets),
not through the raw training module, and saved beside the checkpoint as
`recall.json` and `recall.md`.
"""

from __future__ import annotations

import json
from pathlib import Path

from excise.facts import FAMILIES
from excise.scoring import RecallTable, recall_table


def organism_recall(path: Path | str | None = None) -> RecallTable:
    """Recall of every fact of the world under every prompt family."""
    from excise import organism
    from excise.models import load

    path = Path(path) if path is not None else organism.CHECKPOINT_DIR
    model = load(path, device="cpu")
    rec = organism.recipe(path)
    world = organism.World.generate(rec.world_seed, rec.n_people)
    return recall_table(model, world, FAMILIES)


def write_recall_report(path: Path) -> RecallTable:
    table = organism_recall(path)
    (path / "recall.json").write_text(json.dumps(table.to_dict(), indent=1))
    (path / "recall.md").write_text(
        "Top-1 first-token recall of every fact, by prompt family (held_out: "
        "templates never trained).\n\n" + table.to_markdown() + "\n")
    return table
