"""`excise bench unlearn --quick`: the method table's smoke run, as CI runs it (about 2 minutes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from excise.bench.unlearn import QUICK_METHODS, Budget, run, table_rows
from tests.plugins import registered_toys


@pytest.mark.slow
def test_unlearn_quick_table(tmp_path, world):
    from excise.organism import SHIPPED_ORACLES, _oracle_key, recipe

    forget, _ = world.subjects_split(0.01, seed=0)
    assert (SHIPPED_ORACLES / _oracle_key(recipe(), list(forget)) / "model.safetensors").exists(), \
        "the shipped 1% oracle is stale: rebuild it with excise.organism.retrain_dir and copy it to SHIPPED_ORACLES"
    out = tmp_path / "results"
    with registered_toys() as toy:          # a user's own method runs in the table like any other
        r = run(out, quick=True, progress=False, methods=(*QUICK_METHODS, toy.name), records=tmp_path / "records")
        scopes = {m: table_rows()[m][1] for m in (*QUICK_METHODS, toy.name)}
    assert json.loads((out / "unlearn.json").read_text()) == json.loads(json.dumps(r))
    [split] = r["splits"]
    assert split["forget_facts"] == len(forget) and split["located_neurons"] == Budget().neurons(len(forget))
    rows = {(x["method"], x["scope"]): x for x in split["rows"]}
    assert set(rows) == {("original", "-"), ("oracle", "retrain")} | {(m, s) for m, ss in scopes.items() for s in ss}
    toy_row = rows[(toy.name, "layer")]
    assert toy_row["parameters_touched"] > 0 and toy_row["label"] == toy.name
    # ... and a user's own attack is a verdict column like any other: the original leaks on it, the oracle not
    assert rows[("original", "-")]["leakage"]["toy_request_only"]["verdict"] == "leaks"
    assert rows[("oracle", "retrain")]["leakage"]["toy_request_only"]["verdict"] != "leaks"
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
        assert all(rows[(m, s)]["efficacy"] > 0.5 for s in scopes[m])
    # each edit's record is kept: it re-applies to the unedited organism (`load` checks the weights it starts
    # from) and touches the weights its row counted
    from excise.edit import EditRecord
    from excise.models import load

    saved = sorted(p.name for p in (tmp_path / "records").iterdir())
    assert saved == sorted(f"{m}-{s}-seed0.safetensors" for m, ss in scopes.items() for s in ss)
    record = EditRecord.load(tmp_path / "records" / f"{QUICK_METHODS[0]}-located-seed0.safetensors",
                             load("organism", device="cpu"))
    assert record.n_changed == rows[(QUICK_METHODS[0], "located")]["parameters_touched"]
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
        ("original", None), ("oracle", "new"), ("npo", "old"), ("simnpo", "new"), ("rome", "new")]   # registry order
    assert merged["located_heads"] == old["located_heads"] and merged["wall_seconds"] == 13.0
    (tmp_path / "unlearn.json").write_text(json.dumps({"reruns": [{"methods": ["rome"], "date": "d", "why": "w"}]}))
    assert [n["fractions"] for n in _old_reruns(tmp_path, (0.05,))] == [[0.01, 0.1]]
    assert _old_reruns(tmp_path, (0.01, 0.05, 0.1)) == []


def test_committed_tables_are_what_their_json_generates(tmp_path, monkeypatch):
    """benchmarks/RESULTS.md, results/unlearn.md and results/sisa.md must be what the committed JSON generates
    (a merge of parts, or a hand edit, that skipped `write` fails here)."""
    import shutil

    from excise.bench import sisa, unlearn
    from excise.bench.results import with_provenance, write_results

    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    shipped = json.loads((bench / "results" / "unlearn.json").read_text())
    assert (bench / "results" / "unlearn.md").read_text() == \
        with_provenance(unlearn.to_markdown(shipped, "unlearn.png"), shipped)
    shipped = json.loads((bench / "results" / "sisa.json").read_text())
    assert (bench / "results" / "sisa.md").read_text() == with_provenance(sisa.to_markdown(shipped), shipped)
    shutil.copytree(bench / "results", tmp_path / "benchmarks" / "results")
    monkeypatch.chdir(tmp_path)               # the header names --out as given: the README's relative path
    assert write_results(Path("benchmarks/results")).read_text() == (bench / "RESULTS.md").read_text()


RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def test_the_derived_baselines_calibration_is_what_its_json_generates_and_what_it_says():
    """benchmarks/results/calibration.md is what calibration.json generates, and the measurement says what issue 36
    asks of a derived never-seen baseline: foreign originals leak on every attack, their retrain oracles on none."""
    from excise.bench import calibration
    from excise.bench.results import with_provenance

    shipped = json.loads((RESULTS / "calibration.json").read_text())
    assert (RESULTS / "calibration.md").read_text() == with_provenance(calibration.to_markdown(shipped), shipped)
    for arch, f in shipped["foreign"].items():
        assert {v["verdict"] for v in f["original"]["leakage"].values()} == {"leaks"}, arch
        assert len(f["original"]["leakage"]) == 5 and "leaks" not in {v["verdict"] for v in f["oracle"]["leakage"].values()}, arch


def test_the_batch_table_is_what_its_json_generates_and_spreading_keeps_more():
    """benchmarks/results/batch.md is what batch.json generates; on both foreign models MEMIT spread over the layers
    the trace supports keeps more of the other subjects' facts than at the traced layer alone, still deletes
    (efficacy >= 0.9), and the damage watch warned on every MEMIT run, since neither reaches keep=0.9."""
    from excise.bench import batch
    from excise.bench.results import with_provenance

    shipped = json.loads((RESULTS / "batch.json").read_text())
    assert (RESULTS / "batch.md").read_text() == with_provenance(batch.to_markdown(shipped), shipped)
    rows = {(r["model"], r["method"], r["options"].get("spread", "-")): r for r in shipped["rows"]}
    for arch in ("gpt2", "llama"):
        one, spread = rows[arch, "memit", None], rows[arch, "memit", 0.5]
        assert spread["others_kept"] > one["others_kept"] and spread["efficacy"] >= 0.9, arch
        assert one["warned"] == spread["warned"] == len(shipped["seeds"]) == 5, arch
        assert {tuple(run["layers"]) for run in spread["runs"]} == {(1, 2)}, arch


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_every_committed_result_says_where_it_came_from(path):
    """Issue 34: a committed result without its commit, versions, CPU, threads, seed and wall time fails here,
    and so does a Markdown table that does not end with the line its JSON's block generates."""
    from excise.provenance import FIELDS, provenance_lines

    block = json.loads(path.read_text()).get("provenance")
    assert isinstance(block, dict), f"{path.name} records no provenance: write it with excise.bench.results.write_result"
    assert [f for f in FIELDS if f not in block] == [], f"{path.name}'s provenance lacks fields"
    assert len(block["commit"].removesuffix("+dirty")) == 40 and block["versions"]["torch"], block
    for earlier in block.get("earlier", []):
        assert [f for f in FIELDS if f not in earlier] == [], f"{path.name}: an earlier run's block lacks fields"
    md = path.with_suffix(".md")
    if md.exists():
        assert md.read_text().endswith("\n\n".join(provenance_lines(block)) + "\n"), \
            f"{md.name} does not end with {path.name}'s provenance line: regenerate it from the JSON"


def test_write_result_records_this_machine_and_the_runs_it_keeps(tmp_path):
    import torch

    from excise.bench.results import write_result
    from excise.provenance import FIELDS, provenance_line

    write_result(tmp_path, "t", {"rows": [1]}, "# t\n", seed=3, wall_seconds=1.26)
    first = json.loads((tmp_path / "t.json").read_text())
    block = first["provenance"]
    assert first["rows"] == [1] and set(FIELDS) <= set(block) and "earlier" not in block
    assert block["cpu"] and block["cpu"] != "not recorded" and block["threads"] == torch.get_num_threads() >= 1
    assert (block["seed"], block["wall_seconds"], block["versions"]["torch"]) == (3, 1.3, torch.__version__)
    assert block["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    line = provenance_line(block)
    assert (tmp_path / "t.md").read_text() == "# t\n\n" + line + "\n"
    assert "seed 3; wall time 1 s." in line and block["cpu"] in line and block["commit"][:12] in line

    # a run that keeps rows of the file before it names that file's run, and the runs that file kept, flat
    write_result(tmp_path, "t", {"rows": [1, 2]}, "# t", seed=[0, 1], wall_seconds=None, kept_from=first)
    second = json.loads((tmp_path / "t.json").read_text())
    assert second["provenance"]["earlier"] == [block]
    write_result(tmp_path, "t", {"rows": [1, 2, 3]}, "# t", seed=0, wall_seconds=2.0, kept_from=second)
    third = json.loads((tmp_path / "t.json").read_text())["provenance"]
    assert third["earlier"] == [{k: v for k, v in second["provenance"].items() if k != "earlier"}, block]
    md = (tmp_path / "t.md").read_text().splitlines()
    assert md[2] == provenance_line(third) and md[4].startswith("Rows kept from an earlier run: measured")
    assert "seeds 0, 1; wall time not recorded" in md[4] and md[6].endswith("seed 3; wall time 1 s.")
    # a file from before blocks were recorded: kept rows say their run is unknown
    write_result(tmp_path, "t", {}, "# t", seed=0, wall_seconds=1.0, kept_from={"rows": [1]})
    [unknown] = json.loads((tmp_path / "t.json").read_text())["provenance"]["earlier"]
    assert set(FIELDS) <= set(unknown) and unknown["cpu"] == "not recorded" and unknown["threads"] is None


def test_the_readme_names_the_machine_the_demo_ran_on():
    from excise.bench.readme import _machine, demo_numbers

    shipped = json.loads((RESULTS / "demo.json").read_text())
    assert "provenance" not in demo_numbers(shipped) and "seconds" not in demo_numbers(shipped)
    block = {**shipped["provenance"], "cpu": "Test CPU 9000", "cpu_capability": "AVX2", "threads": 4,
             "versions": {"torch": "9.9"}, "note": None}
    assert _machine({"provenance": block}).startswith("Measured on Test CPU 9000 (AVX2, 4 threads) with torch 9.9")
    readme = (RESULTS.parent.parent / "README.md").read_text()
    assert _machine() in readme.split("<!-- generated: demo -->")[1].split("<!-- /generated -->")[0]
