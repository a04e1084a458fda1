"""`excise bench widths`: the ladder's rungs, its reading, and the committed table (issue "scale")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from excise import organism
from excise.bench.results import with_provenance
from excise.bench.widths import ROME_FACTS, WIDTHS, checkpoint, reading, recipe_at, to_markdown

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def test_the_shipped_width_is_the_shipped_checkpoint_and_a_width_the_heads_cannot_split_is_refused():
    assert checkpoint(organism.recipe().n_embd) == organism.CHECKPOINT_DIR
    with pytest.raises(ValueError, match="multiple of the organism's 4 heads"):
        checkpoint(130, progress=False)
    wide = recipe_at(512)                      # only the width and, with it, the learning rate change
    # approx's default rel 1e-6: one float64 product and division of the recipe's numbers (~1e-16), no torch kernel
    assert wide.lr == pytest.approx(organism.recipe().lr / 4)
    assert {k: v for k, v in vars(wide).items() if k not in ("n_embd", "lr")} == \
        {k: v for k, v in vars(organism.recipe()).items() if k not in ("n_embd", "lr")}


def _row(width: int, kept: float, efficacy: float) -> dict:
    memit = {"memit_lambda30": {"facts": 100, "efficacy": efficacy, "retain_kept": kept}}
    curve = [{"after": 100, "efficacy": efficacy, "retain_recall": kept, "retain_edited_subjects": kept,
              "retain_other_subjects": kept, "null_energy_last": efficacy}]
    return {"width": width, "rome": {"other_subjects_kept": kept, "same_surname_kept": kept, "same_subject_kept": 0.5},
            "memit": memit, "alphaedit_sequential": [{"requests": 100, "l2": 10.0, "curve": curve}]}


def test_the_reading_says_rises_only_when_every_step_up_the_ladder_rises():
    up = reading({"rows": [_row(128, 0.6, 0.1), _row(256, 0.7, 0.3), _row(512, 0.9, 0.6)]})
    assert "other-subjects kept rises (0.600, 0.700, 0.900)" in up
    assert "same-subject kept stays (0.500, 0.500, 0.500)" in up
    mixed = reading({"rows": [_row(128, 0.6, 0.1), _row(256, 0.9, 0.3), _row(512, 0.7, 0.2)]})
    assert "other-subjects kept does not move one way" in mixed and "efficacy does not move one way" in mixed
    down = reading({"rows": [_row(128, 0.9, 0.6), _row(256, 0.5, 0.1)]})
    assert "other-subjects kept falls" in down and "efficacy falls (0.600, 0.100)" in down
    flat_top = reading({"rows": [_row(128, 0.6, 0.1), _row(256, 0.7, 0.3), _row(512, 0.7, 0.3)]})
    assert "other-subjects kept does not fall (0.600, 0.700, 0.700)" in flat_top


def test_the_committed_width_ladder_reaches_d_mlp_2048_and_its_table_is_its_json():
    r = json.loads((RESULTS / "widths.json").read_text())
    assert (RESULTS / "widths.md").read_text() == with_provenance(to_markdown(r), r)
    rows = r["rows"]
    assert [x["width"] for x in rows] == list(WIDTHS) and max(x["d_mlp"] for x in rows) >= 2048
    for x in rows:
        assert x["d_mlp"] == 4 * x["width"] and x["recall"]["request"] >= 0.95      # every rung knows its world
        assert x["rome"]["facts"] == ROME_FACTS and x["rome"]["other_subjects_kept"] is not None
        assert [a["curve"][-1]["after"] for a in x["alphaedit_sequential"]] == [100]
    assert reading(r) in (RESULTS / "widths.md").read_text()
