"""What excise derives is computed once per model and reused (issue "scale": repeated work is kept)."""

from __future__ import annotations

import pytest
import torch

import excise
from excise import cache
from excise.cli import main
from excise.facts import FactSet
from excise.weights import copy_model, fingerprint, model_fingerprint


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache root, and this process's memo forgotten (before and after)."""
    monkeypatch.setenv("EXCISE_CACHE", str(tmp_path / "cache"))
    cache.clear()
    monkeypatch.setattr("excise.context._NAME_SCORES", {})
    yield tmp_path / "cache"
    cache.clear()


def test_derived_computes_once_reads_back_from_disk_and_keys_by_value(fresh_cache):
    calls = []

    def compute():
        calls.append(1)
        return {"texts": ["a", "b"]}

    key = {"fingerprint": "f00", "n": 2}
    assert cache.derived("samples", key, compute) == {"texts": ["a", "b"]}
    assert cache.derived("samples", dict(key), compute) == {"texts": ["a", "b"]} and len(calls) == 1
    cache._MEMORY.clear()                                      # a later session: only the file is left
    assert cache.derived("samples", key, compute) == {"texts": ["a", "b"]} and len(calls) == 1
    cache.derived("samples", {**key, "n": 3}, compute)         # another key is another value
    assert len(calls) == 2
    [row] = [r for r in cache.folders() if r["kind"] == "samples"]
    assert row["files"] == 2 and row["path"] == str(fresh_cache / "samples")
    with pytest.raises(ValueError, match="unknown cache kind 'nope'"):
        cache.derived("nope", key, compute)


def test_the_remembered_fingerprint_follows_every_in_place_write(tiny):
    first = model_fingerprint(tiny)
    assert first == fingerprint(tiny) == model_fingerprint(tiny)
    p = next(tiny.parameters())
    with torch.no_grad():
        p[0, 0] += 1.0                                         # how excise writes weights: in place, no grad
    assert model_fingerprint(tiny) == fingerprint(tiny) != first
    clone = copy_model(tiny)                                   # a copy is its own model: hashed afresh
    assert model_fingerprint(clone) == fingerprint(tiny)


def test_a_second_delete_on_the_same_model_derives_nothing(fresh_cache, foreign_gpt2_dir, monkeypatch):
    """The first rome call samples 128 texts and scores candidate names; the next, on another fact, reuses
    both (the edit and its trace remain: they are the fact's own work)."""
    sampled, scored = [], []
    from excise import context, generation

    sample, score = generation._sample, context._continuation_logprob
    monkeypatch.setattr(generation, "_sample", lambda *a, **k: sampled.append(1) or sample(*a, **k))
    monkeypatch.setattr(context, "_continuation_logprob", lambda m, names: scored.append(len(names)) or score(m, names))
    model = excise.load(foreign_gpt2_dir)
    facts = list(FactSet.load(foreign_gpt2_dir / "facts.json"))
    retain = list(FactSet.load(foreign_gpt2_dir / "retain.json"))
    excise.methods.delete(copy_model(model), facts[:1], "rome", retain=retain, progress=False)
    assert sampled == [1] and sum(scored) > 20
    first_scores = sum(scored)
    excise.methods.delete(copy_model(model), facts[1:2], "rome", retain=retain, progress=False)
    assert sampled == [1]                                      # the covariance sample: read back
    assert sum(scored) - first_scores <= 0.2 * first_scores    # the new fact's subject adds few candidate names
    assert {r["kind"] for r in cache.folders() if r["files"]} >= {"samples", "subjects", "covariance"}


def test_the_cache_command_lists_every_folder_and_clears(fresh_cache, capsys):
    cache.derived("subjects", {"k": 1}, lambda: ["Ana Vell"])
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert str(fresh_cache) in out and all(kind in out for kind in cache.KINDS)
    assert main(["cache", "--clear", "subjects"]) == 0
    assert not (fresh_cache / "subjects").exists()
    assert main(["cache", "--clear", "nothing"]) == 2
    assert "unknown cache kind" in capsys.readouterr().err


def test_a_trace_for_an_edit_site_is_kept_for_the_same_weights_only(foreign_gpt2_dir, monkeypatch):
    import importlib

    from excise.locate.site import edit_site

    module = importlib.import_module("excise.locate.causal_trace")

    traced = []
    trace = module.causal_trace
    monkeypatch.setattr(module, "causal_trace", lambda *a, **k: traced.append(1) or trace(*a, **k))
    monkeypatch.setattr("excise.locate.site._TRACES", {})
    model = excise.load(foreign_gpt2_dir)
    facts = list(FactSet.load(foreign_gpt2_dir / "facts.json"))
    first = edit_site(model, facts)
    assert len(traced) == len(facts)
    again = edit_site(model, facts)
    assert len(traced) == len(facts) and (again.layer, again.position, again.scores) == \
        (first.layer, first.position, first.scores)
    with torch.no_grad():
        next(model.parameters())[0, 0] += 1.0                  # other weights: traced afresh
    edit_site(model, facts)
    assert len(traced) == 2 * len(facts)
