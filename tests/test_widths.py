"""`excise bench widths`: the ladder's rungs, its reading, and the committed table (issue "scale")."""

from __future__ import annotations

import pytest

from excise import organism
from excise.bench.widths import checkpoint, reading


def test_the_shipped_width_is_the_shipped_checkpoint_and_a_width_the_heads_cannot_split_is_refused():
    assert checkpoint(organism.recipe().n_embd) == organism.CHECKPOINT_DIR
    with pytest.raises(ValueError, match="multiple of the organism's 4 heads"):
        checkpoint(130, progress=False)


def _row(width: int, kept: float, efficacy: float) -> dict:
    curve = [{"after": 100, "efficacy": efficacy, "retain_recall": kept, "retain_edited_subjects": kept,
              "retain_other_subjects": kept, "null_energy_last": efficacy}]
    return {"width": width, "rome": {"other_subjects_kept": kept, "same_surname_kept": kept, "same_subject_kept": 0.5},
            "alphaedit_sequential": [{"requests": 100, "l2": 10.0, "curve": curve}]}


def test_the_reading_says_rises_only_when_every_step_up_the_ladder_rises():
    up = reading({"rows": [_row(128, 0.6, 0.1), _row(256, 0.7, 0.3), _row(512, 0.9, 0.6)]})
    assert "other-subjects kept rises (0.600, 0.700, 0.900)" in up
    assert "same-subject kept stays (0.500, 0.500, 0.500)" in up
    mixed = reading({"rows": [_row(128, 0.6, 0.1), _row(256, 0.9, 0.3), _row(512, 0.7, 0.2)]})
    assert "other-subjects kept does not move one way" in mixed and "efficacy does not move one way" in mixed
    down = reading({"rows": [_row(128, 0.9, 0.6), _row(256, 0.5, 0.1)]})
    assert "other-subjects kept falls" in down

