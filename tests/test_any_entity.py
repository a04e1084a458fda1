"""Issue 36: a verdict for any entity. The one-token foreign Llama through the CLI alone, the CLI's word when
no never-seen subject can be made, and batch edits that watch what they do to other subjects' facts.

Not rerun on the second float path by test_float_path (its budget): each bar was checked once there
(ATEN_CPU_CAPABILITY=default, MKL at SSE4.2, one thread), as the docstrings say.
"""

from __future__ import annotations

import contextlib
import io
import random

import pytest
import torch

import excise
from excise.cli import main
from excise.context import derive
from excise.facts import FactSet
from excise.verify import AuditReport


def test_a_one_token_llama_gets_a_verdict_on_every_attack_through_the_cli(foreign_llama_dir, tmp_path):
    """Issue 36: the one-token Llama, through the CLI alone (edit, then verify with facts and a retain file):
    every attack gives a two-sided verdict for both models, and the unedited model leaks on every one.
    Measured on 18 facts of 6 places, context seeds 0-4, the holdout's answers drawn from the facts' and retain
    facts' answers: probes p at most 2e-4, logit lens, membership and truth ratio below 1e-4, relearn 3e-4
    (seed 0) to 0.016 (seed 2) (with the forget facts' own answers: up to 0.0499); with 12 facts relearn was
    underpowered on one seed of five."""
    world = list(FactSet.load(foreign_llama_dir / "world.json"))
    places = sorted({f.subject for f in world})[:6]
    FactSet([f for f in world if f.subject in places]).save(tmp_path / "facts.json")
    FactSet([f for f in world if f.subject not in places]).save(tmp_path / "retain.json")
    given = ["--facts", tmp_path / "facts.json", "--retain", tmp_path / "retain.json", "--sample",
             foreign_llama_dir / "general.txt"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main([str(a) for a in ["edit", foreign_llama_dir, *given, "--method", "npo", "--neurons", "0",
                                       "--out", tmp_path / "npo.safetensors"]]) == 0
        assert main([str(a) for a in ["verify", foreign_llama_dir, *given, "--record", tmp_path / "npo.safetensors",
                                       "--out", tmp_path / "audit"]]) == 0
    assert "warning: no never-seen" not in out.getvalue()
    report = AuditReport.load(tmp_path / "audit" / "audit.json")
    attacks = {"probes", "logit_lens", "relearn", "membership", "truth_ratio"}
    for role in ("reference", "edited"):
        assert set(report.leakage(role)) == attacks, role
    assert {a: v.verdict for a, v in report.leakage("reference").items()} == dict.fromkeys(attacks, "leaks")


def test_without_never_seen_subjects_the_cli_says_so_first_and_strict_exits(foreign_llama_dir, tmp_path,
                                                                             monkeypatch, capsys):
    import excise.context

    monkeypatch.setattr(excise.context, "never_seen_subjects", lambda *a, **k: ([], "could not derive: test"))
    facts = ["--facts", foreign_llama_dir / "facts.json", "--out", tmp_path / "audit"]
    assert main([str(a) for a in ["verify", foreign_llama_dir, *facts, "--strict"]]) == 2
    assert "no never-seen subjects: the audit can give no two-sided verdict" in capsys.readouterr().err
    assert main([str(a) for a in ["verify", foreign_llama_dir, *facts]]) == 0
    printed = capsys.readouterr().out
    assert printed.index("warning: no never-seen subjects") < printed.index("metric")


def _twenty(directory):
    world = list(FactSet.load(directory / "world.json"))
    facts = random.Random(0).sample(world, 20)
    return facts, [f for f in world if f.subject not in {f.subject for f in facts}], \
        (directory / "general.txt").read_text().splitlines()


def test_a_batch_edit_watches_other_subjects_and_warns_or_stops(foreign_llama_dir, foreign_gpt2_dir):
    """Issue 36: MEMIT over 20 facts at the traced layer alone reached other subjects' facts: measured on the 8
    retain facts of other subjects, kept 0.00 (Llama) and 0.12 / 0.25 (GPT-2, 2 / 1 threads), far below
    keep=0.9. It says so; with on_damage='stop' the batch is undone and refused, and ROME, one fact at a time,
    stops before the next fact, the facts done staying edited (Llama: after 12 of 20). Spread over the layers
    the trace supports (the default), the same batch keeps more (0.38 Llama, 0.50 GPT-2 here; over 5 draws of
    20 facts 0.48 / 0.66 against 0.29 / 0.34, benchmarks/results/batch.md) and still warns."""
    from excise.methods import delete

    for directory in (foreign_gpt2_dir, foreign_llama_dir):
        model = excise.load(directory)
        facts, retain, general = _twenty(directory)
        context = derive(model, facts, retain=retain, sample=general, general=general, generate=False)
        with pytest.warns(UserWarning, match=r"memit: after 20 of 20 facts, other subjects' facts kept \d\.\d\d "
                                             r"\(8 retain facts of other subjects"):
            record = delete(model, facts, "memit", context=context, progress=False, spread=None)
        one = record.meta["damage"]["others_kept"]
        assert record.meta["damage"]["watched_facts"] == 8 and one <= 0.25
        record.undo()
        with pytest.warns(UserWarning, match="memit: after 20 of 20 facts"):
            record = delete(model, facts, "memit", context=context, progress=False)
        assert "layers [1, 2]" in record.meta["context"]["layers"]
        assert one < record.meta["damage"]["others_kept"] < 0.9
        record.undo()
    at = {k: record.meta["site"][k] for k in ("layer", "position")}       # the Llama's traced site, not traced again
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="memit undone: other subjects' facts kept"):
        delete(model, facts, "memit", context=context, progress=False, on_damage="stop", **at)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    with pytest.warns(UserWarning, match=r"rome: after \d+ of 20 facts"):
        record = delete(model, facts, "rome", context=context, progress=False, on_damage="stop", **at)
    history = record.meta["damage"]["history"]
    assert record.meta["facts_edited"] == len(history) < 20                     # stopped before the next fact
    assert [h["others_kept"] < 0.9 for h in history] == [False] * (len(history) - 1) + [True]
    record.undo()
