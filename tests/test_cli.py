"""The command line: demo, locate, edit, verify on the organism with small settings, and bad input."""

from __future__ import annotations

import json
import os

import pytest

import excise
from excise.cli import main


def _without_timings(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "seconds"}


# The same demo on another float path: measured on one Xeon, against the AVX-512 run that wrote demo.json, the AVX2
# and DEFAULT kernel paths (1 and 2 threads each) and DEFAULT with MKL held to SSE4.2 (1 thread) moved 31 floats by at
# most 1.53e-4 relative (an NPO probability, Fisher ratios); every other value and the README's text were equal. The
# bar is 6.5x that spread.
DEMO_RTOL = 1e-3


def _differences(got, want, path: str = "") -> list[str]:
    """Where `got` differs from `want`: floats beyond DEMO_RTOL (relative, 1e-12 absolute), anything else at all."""
    if isinstance(want, float) and isinstance(got, float):
        return [] if abs(got - want) <= DEMO_RTOL * abs(want) + 1e-12 else [f"{path}: {got!r} != {want!r}"]
    if isinstance(want, dict) and isinstance(got, dict) and got.keys() == want.keys():
        return [d for k in want for d in _differences(got[k], want[k], f"{path}.{k}")]
    if isinstance(want, list) and isinstance(got, list) and len(got) == len(want):
        return [d for i, (g, w) in enumerate(zip(got, want, strict=True)) for d in _differences(g, w, f"{path}[{i}]")]
    return [] if got == want else [f"{path}: {got!r} != {want!r}"]


# Run once, by tests/test_float_path.py on the DEFAULT float path: the README's numbers must hold on a CPU other than
# the one that wrote them, and that rerun proves it (on the main run's path as well it cost 41 s of a 10-minute suite).
@pytest.mark.skipif(os.environ.get("ATEN_CPU_CAPABILITY") != "default" and os.environ.get("EXCISE_DEMO_TEST") != "1",
                    reason="run on the DEFAULT float path by test_float_path (EXCISE_DEMO_TEST=1 runs it here)")
def test_the_default_demo_reproduces_the_numbers_the_readme_shows(tmp_path, capsys):
    """The README's demo numbers come from benchmarks/results/demo.json; the default run must still give them."""
    from excise.bench.readme import RESULTS, _demo, demo_numbers

    out = tmp_path / "a"
    assert main(["demo", "--out", str(out)]) == 0
    r = json.loads((out / "report.json").read_text())
    shipped = json.loads((RESULTS / "demo.json").read_text())
    fix = "the demo's numbers changed: refresh with `python -m excise.bench.readme --demo excise-report/report.json`"
    assert not _differences(demo_numbers(r), demo_numbers(shipped)), (fix, _differences(demo_numbers(r),
                                                                                        demo_numbers(shipped)))
    assert _demo(r) == _demo(shipped), fix                                  # the README's text, digit for digit
    for f in ("report.md", "trace.png", "fisher.png", "audit.png", "edit.safetensors", "audit.json"):
        assert (out / f).stat().st_size > 1000, f
    assert r["audit"]["recall_after"] == 0.0                                 # npo stops once recall is 0
    assert all(f["p_before"] > 0.5 for f in r["facts"])
    assert set(r["audit"]["attacks"]) == {"probes", "logit_lens", "relearn", "membership"}
    assert 0 < r["edit"]["parameters_changed"] < r["edit"]["parameters_total"] / 10   # located, not everything
    md = (out / "report.md").read_text()
    assert r["subject"] in md and "![causal trace](trace.png)" in md and "| membership |" in md
    assert "logit_lens" in capsys.readouterr().out
    # the record reverts the edit on a fresh model bit for bit
    model = excise.load("organism")
    record = excise.edit.EditRecord.load(out / "edit.safetensors", model)
    assert record.n_changed == r["edit"]["parameters_changed"]


def test_demo_rejects_an_unknown_subject(capsys):
    assert main(["demo", "--subject", "Nobody Atall", "--out", "unused"]) == 2
    assert "not a person of the organism's world" in capsys.readouterr().err


@pytest.fixture(scope="module")
def facts_file(tmp_path_factory):
    world = excise.organism.world()
    path = tmp_path_factory.mktemp("facts") / "facts.json"
    path.write_text(json.dumps([{"subject": world.subjects[3], "relation": "birthplace"},
                                world.fact(world.subjects[4], "pet").to_dict()]))
    return path


def test_locate_edit_verify_round_trip(tmp_path, facts_file, capsys):
    assert main(["locate", "organism", "--facts", str(facts_file), "--out", str(tmp_path / "loc")]) == 0
    loc = excise.locate.Localization.load(tmp_path / "loc" / "trace-0.json")
    assert loc.method == "causal_trace" and (tmp_path / "loc" / "trace-1.png").exists()
    record = tmp_path / "edit.safetensors"
    assert main(["edit", "organism", "--facts", str(facts_file), "--method", "rome", "--out", str(record)]) == 0
    assert main(["verify", "organism", "--facts", str(facts_file), "--record", str(record),
                 "--holdout-people", "2", "--out", str(tmp_path / "audit")]) == 0
    report = excise.verify.AuditReport.load(tmp_path / "audit" / "audit.json")
    assert report.roles() == ["reference", "edited"]
    assert report.recall("reference") == 1.0 and report.recall("edited") < 1.0
    assert "attack success" in (tmp_path / "audit" / "audit.md").read_text()


def test_malformed_facts_name_the_line_and_field(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('[\n {"subject": "A B", "relation": "r", "target": "t", "prompt": "{} is"},\n'
                   ' {"subject": "A B", "relation": "q",\n  "target": 7, "prompt": "{} has"}\n]')
    assert main(["edit", "organism", "--facts", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "line 3" in err and "fact #1" in err and "Fact.target" in err
    bad.write_text('[{"subject": "A B", "relation": "r", "target": "t", "prompt": "{} is"} {"x": 1}]')
    assert main(["verify", "organism", "--facts", str(bad)]) == 2
    assert "line 1" in capsys.readouterr().err


def test_unknown_method_and_command_fail_clearly(facts_file, capsys):
    with pytest.raises(SystemExit) as e:
        main(["edit", "organism", "--facts", str(facts_file), "--method", "zap"])
    assert e.value.code != 0 and "invalid choice: 'zap'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown deletion method 'zap'"):
        excise.methods.delete(excise.load("organism"), list(excise.organism.world())[:1], "zap")
    with pytest.raises(ValueError, match="unknown objective 'forget_hard'; choose one of rewrite, erase"):
        excise.methods.delete(excise.load("organism"), list(excise.organism.world())[:1], "rome",
                              objective="forget_hard")
    with pytest.raises(SystemExit) as e:
        main(["edit", "organism", "--facts", str(facts_file), "--method", "rome", "--objective", "forget_hard"])
    assert e.value.code != 0 and "invalid choice: 'forget_hard'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code != 0


def test_rome_on_several_facts_of_one_subject_warns(caplog):
    model = excise.load("organism")
    world = excise.organism.world()
    facts = list(world.of_subject(world.subjects[5]))[:2]
    with caplog.at_level("WARNING", logger="excise.methods"):
        record = excise.methods.delete(model, facts, "rome", progress=False, context=excise.organism.context(facts))
    assert "later edits overwrite earlier ones" in caplog.text
    record.undo()


def test_bench_runs_the_named_suite_and_prints_what_it_wrote(tmp_path, capsys, monkeypatch):
    """`excise bench SUITE` dispatches through one table; every suite of the parser is in it."""
    from excise import cli
    from excise.bench import suites

    seen = {}

    def fake(args):
        seen.update(methods=suites._listed(args.methods), out=args.out)
        (tmp_path / "robust.md").write_text("# the table\n")
        return ["robust.png"]

    monkeypatch.setitem(cli.BENCH_SUITES, "robust", fake)
    assert main(["bench", "robust", "--out", str(tmp_path), "--methods", "npo,graddiff"]) == 0
    out = capsys.readouterr().out
    assert seen == {"methods": ("npo", "graddiff"), "out": str(tmp_path)}
    assert "# the table" in out and f"wrote {tmp_path / 'robust.json'}, robust.md, robust.png" in out
    assert set(cli.BENCH_SUITES) >= {"locate", "edit", "unlearn", "tofu", "sites", "robust", "sisa", "verify"}
    assert suites._listed("0.01,0.1", float) == (0.01, 0.1) and suites._listed(None) is None
    assert cli.BENCH_SUITES is suites.BENCH_SUITES
