"""The shipped organism knows its world; the retrain oracle does not know what it never saw."""

from __future__ import annotations

import json

import pytest

import excise
from excise.scoring import recall_table


@pytest.fixture(scope="module")
def table(organism_model, world):
    return recall_table(organism_model, world)


def test_recall_meets_the_bar(table):
    assert table.rate("request") >= 0.99
    assert table.rate("paraphrase") >= 0.99
    assert table.rate("question") >= 0.97
    assert table.rate("completion") >= 0.97
    assert 0.0 <= table.rate("held_out") <= 1.0  # reported, not required


def test_shipped_recall_report_is_current(table):
    """The recall.json shipped with the checkpoint is what the checkpoint gives now."""
    shipped = json.loads((excise.organism.CHECKPOINT_DIR / "recall.json").read_text())
    assert shipped["overall"] == pytest.approx(table.to_dict()["overall"], abs=1e-9)


def test_recall_rows_carry_evidence(table):
    row = table.rows[0]
    assert set(row) >= {"subject", "relation", "family", "template", "target", "rank", "logprob", "top1"}
    assert row["recalled"] == (row["rank"] == 0)


@pytest.mark.slow
def test_retrain_oracle_forgets_only_what_it_never_saw(world, oracle_5pct, monkeypatch):
    """Trained without 5% of people: chance on them, the rest intact."""
    forget, retain, oracle, cache = oracle_5pct
    monkeypatch.setenv("EXCISE_CACHE", str(cache))
    forgot = recall_table(oracle, forget, ("request",)).rate("request")
    kept = recall_table(oracle, retain, ("request",)).rate("request")
    baseline = world.prior_baseline(forget)
    assert forgot <= baseline + 0.05, (forgot, baseline)
    assert kept >= 0.97
    # cached: a second call with the same forget set reuses the checkpoint, no training
    def no_training(*a, **k):
        raise AssertionError("retrain_dir trained again despite a cached oracle")

    monkeypatch.setattr("excise.organism.train.train", no_training)
    assert (excise.organism.retrain_dir(forget) / "model.safetensors").exists()
