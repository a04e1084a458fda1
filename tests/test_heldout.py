"""excise bench heldout: its rows, its goal, and a re-run of some seeds keeping the others (bench_split stubbed:
the audits themselves are the unlearn bench's, tested there)."""

from __future__ import annotations

import json

import pytest

from excise.bench import heldout


def split_row(method: str, utility: float, verdicts: dict[str, str]) -> dict:
    return {"method": method, "scope": "located", "efficacy": 0.9, "utility": utility, "relearn_recall": 0.05,
            "forget_quality": 0.3, "retain_kept": 0.97, "seconds": 10.0,
            "leakage": {a: {"verdict": v, "auc": 0.5, "p_value": 0.9, "layer": None} for a, v in verdicts.items()}}


EVERY = {"probes": "indistinguishable", "logit_lens": "indistinguishable", "relearn": "indistinguishable"}


def test_the_goal_needs_the_utility_and_every_attack():
    assert heldout.row_of(split_row("undo", 0.95, EVERY), 3)["meets_goal"]
    assert not heldout.row_of(split_row("undo", 0.949, EVERY), 3)["meets_goal"]
    assert not heldout.row_of(split_row("undo", 0.99, EVERY | {"relearn": "leaks"}), 3)["meets_goal"]
    assert not heldout.row_of(split_row("undo", 0.99, EVERY | {"probes": "underpowered"}), 3)["meets_goal"]
    assert not heldout.row_of(split_row("undo", 0.99, {}), 3)["meets_goal"]          # no verdict is no pass
    row = heldout.row_of(split_row("undo", 0.95, EVERY), 4)
    assert row["seed"] == 4 and row["verdicts"] == EVERY and row["leakage"]["probes"] == {"auc": 0.5, "p_value": 0.9}


def test_a_rerun_of_some_seeds_keeps_the_other_rows(tmp_path, monkeypatch):
    calls = []

    def fake_split(original, world, fraction, methods, budget, seed, progress, log, relearn_draws, table, attacks,
                   records):
        calls.append((seed, tuple(methods), relearn_draws, fraction, attacks, records))
        assert set(methods) <= set(table)
        return {"rows": [split_row("original", 1.0, {"probes": "leaks"}), split_row("oracle", 1.0, EVERY)]
                + [split_row(m, 0.9 + seed / 100, EVERY) for m in methods]}

    monkeypatch.setattr(heldout, "bench_split", fake_split)
    monkeypatch.setattr(heldout, "load", lambda *a, **k: None)
    monkeypatch.setattr(heldout.organism, "world", lambda: None)
    heldout.run(tmp_path, seeds=(3, 4), methods=("undo", "undo_original_outside"))
    assert calls[-1][4:] == (None, None)                  # the default audit; no records kept
    heldout.run(tmp_path, seeds=(4,), methods=("undo",), attacks=["depth", "probes"], records=tmp_path / "rec")
    assert calls[-1] == (4, ("undo",), heldout.RELEARN_DRAWS, 0.05, ("depth", "probes"), tmp_path / "rec")
    rows = json.loads((tmp_path / "heldout.json").read_text())["rows"]
    assert sorted((r["method"], r["seed"]) for r in rows) == sorted(
        [(m, s) for m in ("original", "oracle", "undo", "undo_original_outside") for s in (3, 4)])
    assert [r["meets_goal"] for r in rows if r["method"] == "undo"] == [False, False]        # 0.93, 0.94
    md = (tmp_path / "heldout.md").read_text()
    assert "| 4 | undo | 0.900 | 0.940 |" in md and "indist. (0.50)" in md
    heldout.run(tmp_path, seeds=(0,), methods=("undo",))                 # a tuning seed's rows are marked so
    md = (tmp_path / "heldout.md").read_text()
    assert "| 0 (tuning) | undo | 0.900 | 0.900 |" in md and "| 4 | undo | 0.900 | 0.940 |" in md
    with pytest.raises(ValueError, match="unknown methods.*undo_alpha07_stranger, retrain_again"):
        heldout.run(tmp_path, seeds=(3,), methods=("undo_v9",))


def test_merge_joins_parallel_runs_and_keeps_their_provenance(tmp_path, monkeypatch):
    def fake_split(original, world, fraction, methods, budget, seed, progress, log, relearn_draws, table, **kw):
        return {"rows": [split_row("oracle", 1.0, EVERY)] + [split_row(m, 0.96, EVERY) for m in methods]}

    monkeypatch.setattr(heldout, "bench_split", fake_split)
    monkeypatch.setattr(heldout, "load", lambda *a, **k: None)
    monkeypatch.setattr(heldout.organism, "world", lambda: None)
    for seed in (3, 4):
        heldout.run(tmp_path / f"s{seed}", seeds=(seed,), methods=("undo",))
    merged = heldout.merge(tmp_path / "all", [tmp_path / "s3", tmp_path / "s4"])
    assert [(r["method"], r["seed"]) for r in merged["rows"]] == [("oracle", 3), ("oracle", 4), ("undo", 3),
                                                                  ("undo", 4)]
    assert all(r["meets_goal"] for r in merged["rows"] if r["method"] == "undo")
    assert len(merged["provenance"]["earlier"]) == 2 and set(merged["seed_seconds"]) == {"3", "4"}
    assert "| 4 | undo | 0.900 | 0.960 |" in (tmp_path / "all" / "heldout.md").read_text()
    with pytest.raises(ValueError, match="missing"):
        heldout.merge(tmp_path / "all", [tmp_path / "s3", tmp_path / "nowhere"])


def test_bench_attacks_all_names_every_audited_attack():
    from excise.bench.suites import _attacks
    from excise.verify.attacks import audited, defaults

    assert _attacks("all") == audited() and len(audited()) > len(defaults())
    assert _attacks("depth,probes") == ("depth", "probes") and _attacks(None) is None


def test_saved_records_get_the_attacks_that_compare_models_without_redoing_the_edit(tmp_path, monkeypatch):
    from types import SimpleNamespace

    def fake_split(original, world, fraction, methods, budget, seed, progress, log, relearn_draws, table, **kw):
        return {"rows": [split_row("oracle", 1.0, EVERY)] + [split_row(m, 0.96, EVERY) for m in methods]}

    applied, audited_with = [], []

    class Record:
        @staticmethod
        def load(path, model):
            return SimpleNamespace(apply=lambda: applied.append(path.name))

    def fake_compared(model, original, oracle, forget, config, context):
        audited_with.append((config.attacks, config.seed))
        return {"leakage": {"reference": {"verdict": "leaks", "auc": 0.7, "p_value": 0.01, "layer": None}},
                "depth": {"uds": 0.9, "shallow_share": 0.1, "facts": 80}}

    monkeypatch.setattr(heldout, "bench_split", fake_split)
    monkeypatch.setattr(heldout, "load", lambda *a, **k: None)
    monkeypatch.setattr(heldout.organism, "world", lambda: None)
    monkeypatch.setattr(heldout, "prepare_split", lambda *a, **k: (SimpleNamespace(forget=[]), None, None, None))
    monkeypatch.setattr(heldout, "compared", fake_compared)
    monkeypatch.setattr(heldout, "EditRecord", Record)
    monkeypatch.setattr(heldout, "copy_model", lambda m: m)
    heldout.run(tmp_path, seeds=(3, 4), methods=("undo",))
    records = tmp_path / "records"
    records.mkdir()
    (records / "undo-located-seed3.safetensors").write_bytes(b"")
    r = heldout.audit_records(tmp_path, records, seeds=(3, 4), methods=("undo",))
    assert applied == ["undo-located-seed3.safetensors"] and audited_with == [(("reference", "depth"), 3)]
    rows = {(x["method"], x["seed"]): x for x in r["rows"]}
    assert rows[("undo", 3)]["verdicts"] == EVERY | {"reference": "leaks"} and not rows[("undo", 3)]["meets_goal"]
    assert rows[("undo", 3)]["depth"]["uds"] == 0.9 and rows[("undo", 4)]["verdicts"] == EVERY   # no record: as it was
    assert rows[("undo", 4)]["meets_goal"] and "reference, depth added from saved edit records (undo seed 3)" in \
        json.loads((tmp_path / "heldout.json").read_text())["provenance"]["note"]
    md = (tmp_path / "heldout.md").read_text()
    assert "| 3 | undo | 0.900 | 0.960 | 0.050 | 0.3 | 0.90 (10% shallow) |" in md and "| 4 | undo | 0.900 | 0.960 | 0.050 | 0.3 | - |" in md
    (records / "undo_alpha07_lens-located-seed3.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="has no row"):
        heldout.audit_records(tmp_path, records, seeds=(3,), methods=("undo_alpha07_lens",))


def test_the_readme_block_says_which_held_out_seeds_a_method_ran_on(tmp_path, monkeypatch):
    """A method run on fewer held-out seeds than fixed says which; a seed it did not run is not a seed met."""
    from excise.bench import readme

    rows = [heldout.row_of(split_row(m, 0.99, EVERY), s) | {"depth": None}
            for m, seeds in (("oracle", (3, 4, 5)), ("undo", (3, 4, 5)), ("undo_alpha07_drop", (3, 5)))
            for s in seeds]
    rows.append(heldout.row_of(split_row("undo_alpha07_drop", 0.99, EVERY), 0) | {"depth": None})   # tuning
    (tmp_path / "heldout.json").write_text(json.dumps({"held_out_seeds": [3, 4, 5], "rows": rows}))
    monkeypatch.setattr(readme, "RESULTS", tmp_path)
    block = readme._heldout()
    assert "`undo` meets the goal on 3 of 3 held-out seeds (3 at family-wise level) on the 3 attacks" in block
    assert "`undo_alpha07_drop` meets the goal on 2 of 3 held-out seeds (run on 2: 3, 5) (2 at family-wise level) " \
        "on the 3 attacks" in block
    assert "| 0 |" not in block


def test_retrain_again_writes_the_other_retrain_into_the_organism_as_one_undoable_record(monkeypatch):
    """The calibration row's model is the retrain's weights, every one, and its record undoes to the organism
    (a shipped oracle stands in for the training-seed-1 retrain, which takes minutes to train)."""
    from types import SimpleNamespace

    import torch

    from excise.edit.record import storage_owners
    from excise.models import load
    from excise.weights import copy_model

    shipped = sorted(heldout.organism.SHIPPED_ORACLES.iterdir())[0]
    asked = []

    def fake_dir(forget, rec, progress):
        asked.append((forget, rec.seed, rec.world_seed))
        return shipped

    monkeypatch.setattr(heldout.organism, "retrain_dir", fake_dir)
    original = load("organism", device="cpu")
    model = copy_model(original)
    forget = list(heldout.organism.world())[:2]
    record = heldout.retrain_again(model, SimpleNamespace(forget=forget), "retrain", 3)
    assert asked == [(forget, heldout.RETRAIN_AGAIN_SEED, heldout.organism.recipe().world_seed)]
    other = storage_owners(load(str(shipped), device="cpu"))
    mine = storage_owners(model)
    # bitwise on any CPU: copy_ moves the stored values and undo writes back a snapshot; nothing is computed
    assert set(mine) == set(other) and all(torch.equal(p, other[n]) for n, p in mine.items())
    assert record.method == "retrain" and record.n_changed > 0
    record.undo()
    assert all(torch.equal(p, storage_owners(original)[n]) for n, p in mine.items())
    monkeypatch.setattr(heldout, "RETRAIN_AGAIN_SEED", heldout.organism.recipe().seed)
    with pytest.raises(ValueError, match="is the oracle itself"):
        heldout.retrain_again(model, SimpleNamespace(forget=forget), "retrain", 3)


def test_the_exact_line_counts_the_retrains_that_read_indistinguishable_everywhere():
    rows = [heldout.row_of(split_row("oracle", 1.0, EVERY), 3),
            heldout.row_of(split_row("retrain_again", 1.0, EVERY | {"probes": "over_suppressed"}), 3),
            heldout.row_of(split_row("undo", 0.99, EVERY), 3)]          # a method's row is not counted
    line = heldout.exact_line(rows)
    assert "2 rows over seeds 3, 3 attacks each" in line and "on 1 of 2" in line
    assert "retrain_again seed 3: probes over-suppressed (0.50, p 0.9)" in line and "probability 0.12" in line
    assert heldout.exact_line(rows[2:]) == ""


def test_the_familywise_reading_tells_a_multiplicity_false_alarm_from_a_leak():
    def row(p_probes: float, verdict: str = "over_suppressed", utility: float = 0.99) -> dict:
        r = heldout.row_of(split_row("undo", utility, EVERY | {"probes": verdict}), 3)
        r["leakage"]["probes"]["p_value"] = p_probes
        return r

    # three attacks: family-wise 0.05 rejects below 0.05 / 3 = 0.0167
    assert heldout.meets_familywise(row(0.02)) and not row(0.02)["meets_goal"]
    assert heldout.goal_cell(row(0.02)) == "missed (family-wise met)"
    assert not heldout.meets_familywise(row(0.016, "leaks")) and heldout.goal_cell(row(0.016)) == "missed"
    assert not heldout.meets_familywise(row(0.9, "underpowered"))
    assert not heldout.meets_familywise(row(0.9, "indistinguishable", utility=0.94))
    assert heldout.goal_cell(row(0.9, "indistinguishable")) == "**met**"
