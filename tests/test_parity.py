"""excise.bench.parity: which benchmark values moved between two result directories."""

from __future__ import annotations

import json

from excise.bench.parity import flatten, moved, to_markdown


def test_rows_are_keyed_by_method_and_scope_and_renamed_rows_are_matched(tmp_path):
    before, after = tmp_path / "before", tmp_path / "after"
    before.mkdir(), after.mkdir()
    (before / "edit.json").write_text(json.dumps({"rome_erase": {"efficacy": 0.9, "seconds_per_fact": 1.0}}))
    (after / "edit.json").write_text(json.dumps({"rome_erase": {"efficacy": 0.2, "seconds_per_fact": 3.0},
                                                 "rome_erase_unlikelihood": {"efficacy": 0.9,
                                                                             "seconds_per_fact": 2.0}}))
    rows = [{"method": "npo", "scope": "all", "forget_quality": 0.5}]
    (before / "unlearn.json").write_text(json.dumps({"splits": [{"fraction": 0.01, "rows": rows}]}))
    rows[0]["forget_quality"] = 0.25
    (after / "unlearn.json").write_text(json.dumps({"splits": [{"fraction": 0.01, "rows": rows}]}))

    assert flatten({"splits": [{"fraction": 0.05, "rows": rows}]}) == {"splits.0.05.fraction": 0.05,
                                                                     "splits.0.05.rows.npo/all.forget_quality": 0.25}
    changes = moved(before, after)
    # the old rome_erase is excise's variant, now rome_erase_unlikelihood: same value, nothing moved; seconds skipped
    assert changes["edit.json"] == []
    assert changes["unlearn.json"] == [{"key": "splits.0.01.rows.npo/all.forget_quality", "before": 0.5,
                                        "after": 0.25}]
    md = to_markdown(changes, "the old run")
    assert "| splits.0.01.rows.npo/all.forget_quality | 0.500 | 0.250 |" in md and "| Causal trace noise |" in md
