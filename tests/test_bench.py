"""`excise bench unlearn --quick`: the method table's smoke run, as CI runs it (about 2 minutes)."""

from __future__ import annotations

import json

import pytest

from excise.bench.unlearn import METHODS, QUICK_METHODS, Budget, run


@pytest.mark.slow
def test_unlearn_quick_table(tmp_path, world):
    from excise.organism import SHIPPED_ORACLES, _oracle_key, recipe

    forget, _ = world.subjects_split(0.01, seed=0)
    assert (SHIPPED_ORACLES / _oracle_key(recipe(), list(forget)) / "model.safetensors").exists(), \
        "the shipped 1% oracle is stale: rebuild it with excise.organism.retrain_dir and copy it to SHIPPED_ORACLES"
    out = tmp_path / "results"
    r = run(out, quick=True, progress=False)
    assert json.loads((out / "unlearn.json").read_text()) == json.loads(json.dumps(r))
    [split] = r["splits"]
    assert split["forget_facts"] == len(forget) and split["located_neurons"] == Budget().neurons(len(forget))
    rows = {(x["method"], x["scope"]): x for x in split["rows"]}
    assert set(rows) == {("original", "-"), ("oracle", "retrain")} | {(m, s) for m in QUICK_METHODS
                                                                     for s in METHODS[m][1]}
    original, oracle = rows[("original", "-")], rows[("oracle", "retrain")]
    # the two anchors: the oracle is itself (forget quality 1), the original knows every forget fact
    assert oracle["forget_quality"] == pytest.approx(1.0)
    assert original["forget_quality"] < 0.05 and original["efficacy"] == 0.0 and original["utility"] == 1.0
    assert oracle["efficacy"] >= 0.9 and 0.9 <= oracle["utility"] <= 1.1
    assert original["leakage"]["membership"]["verdict"] == "leaks"          # the audit's two-sided verdicts ride along
    assert oracle["leakage"]["membership"]["verdict"] != "leaks"
    for m in QUICK_METHODS:
        assert rows[(m, "located")]["parameters_touched"] == rows[(m, "random")]["parameters_touched"] > 0
        assert rows[(m, "all")]["parameters_touched"] > 10 * rows[(m, "located")]["parameters_touched"]
        assert all(rows[(m, s)]["efficacy"] > 0.5 for s in METHODS[m][1])
    md = (tmp_path / "RESULTS.md").read_text()
    assert "results/unlearn.png" in md and "| retrain oracle (gold) | retrain |" in md and "What the table says" in md
    assert "Two-sided verdicts against" in md and "| ok on all |" in md
    assert (out / "unlearn.png").stat().st_size > 10_000


def test_unknown_method_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown methods"):
        run(tmp_path, methods=("forget_harder",))


def test_a_table_grows_split_by_split_and_never_mixes_settings(tmp_path):
    from excise.bench.unlearn import kept_splits

    budget = Budget()
    settings = {"seed": 0, "quick": False, "budget": budget.__dict__, "holdout_people": 30}
    (tmp_path / "unlearn.json").write_text(json.dumps({**settings, "splits": [
        {"fraction": 0.05, "rows": []}, {"fraction": 0.1, "rows": [], "holdout_people": 300}]}))
    kept = kept_splits(tmp_path, 0, False, budget, (0.01,))
    assert [(s["fraction"], s["holdout_people"]) for s in kept] == [(0.05, 30), (0.1, 300)]   # old files: the top's
    assert [s["fraction"] for s in kept_splits(tmp_path, 0, False, budget, (0.1, 0.01))] == [0.05]   # 0.1 re-run
    assert kept_splits(tmp_path, 1, False, budget, (0.01,)) == []      # another seed: replaced, not mixed
    assert kept_splits(tmp_path / "none", 0, False, budget, (0.01,)) == []
    # re-running some methods of a split audited against another never-seen baseline would mix two baselines
    with pytest.raises(ValueError, match="30 never-seen people, this run would use 150"):
        run(tmp_path, splits=(0.05,), methods=("npo",))


def test_a_subset_of_methods_re_run_replaces_only_its_rows(tmp_path):
    from excise.bench.unlearn import _old_reruns, merge_rows

    anchors = [{"method": "original"}, {"method": "oracle", "v": "new"}]
    old = {"fraction": 0.05, "rows": [{"method": "original"}, {"method": "oracle", "v": "old"},
                                      {"method": "npo", "v": "old"}, {"method": "rome", "v": "old"}],
           "located_heads": [{"layer": 1, "index": 2}], "locate_seconds": {"fisher": 1.0, "attribution": 5.0},
           "wall_seconds": 10.0}
    new = {"fraction": 0.05, "rows": [*anchors, {"method": "simnpo", "v": "new"}, {"method": "rome", "v": "new"}],
           "located_heads": [], "locate_seconds": {"fisher": 2.0, "attribution": 0.0}, "wall_seconds": 3.0}
    merged = merge_rows(old, new, ["simnpo", "rome"])
    assert [(r["method"], r.get("v")) for r in merged["rows"]] == [
        ("original", None), ("oracle", "new"), ("rome", "new"), ("npo", "old"), ("simnpo", "new")]
    assert merged["located_heads"] == old["located_heads"] and merged["wall_seconds"] == 13.0
    (tmp_path / "unlearn.json").write_text(json.dumps({"reruns": [{"methods": ["rome"], "date": "d", "why": "w"}]}))
    assert [n["fractions"] for n in _old_reruns(tmp_path, (0.05,))] == [[0.01, 0.1]]
    assert _old_reruns(tmp_path, (0.01, 0.05, 0.1)) == []


def test_committed_tables_are_what_their_json_generates(tmp_path, monkeypatch):
    """benchmarks/RESULTS.md, results/unlearn.md and results/sisa.md must be what the committed JSON generates
    (a merge of parts, or a hand edit, that skipped `write` fails here)."""
    import shutil
    from pathlib import Path

    from excise.bench import sisa, unlearn
    from excise.bench.results import write_results

    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    shipped = json.loads((bench / "results" / "unlearn.json").read_text())
    assert (bench / "results" / "unlearn.md").read_text() == unlearn.to_markdown(shipped, "unlearn.png")
    assert (bench / "results" / "sisa.md").read_text() == \
        sisa.to_markdown(json.loads((bench / "results" / "sisa.json").read_text()))
    shutil.copytree(bench / "results", tmp_path / "benchmarks" / "results")
    monkeypatch.chdir(tmp_path)               # the header names --out as given: the README's relative path
    assert write_results(Path("benchmarks/results")).read_text() == (bench / "RESULTS.md").read_text()
