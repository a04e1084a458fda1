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
    # a share of recalled facts (a count over a count): only the decimal in JSON rounds, far below 1e-9
    assert shipped["overall"] == pytest.approx(table.to_dict()["overall"], abs=1e-9)


def test_recall_rows_carry_evidence(table):
    row = table.rows[0]
    assert set(row) >= {"subject", "relation", "family", "template", "target", "rank", "logprob", "top1"}
    assert row["recalled"] == (row["rank"] == 0)


def test_shipped_oracle_is_the_current_recipes_and_forgets_only_what_it_never_saw(world, oracle_5pct):
    """Trained without 5% of people: chance on them, the rest intact."""
    from excise.organism import SHIPPED_ORACLES, _oracle_key, recipe

    forget, retain, oracle = oracle_5pct
    key = _oracle_key(recipe(), list(forget))
    assert (SHIPPED_ORACLES / key / "model.safetensors").exists(), \
        "the shipped 5% oracle is stale: rebuild it with excise.organism.retrain_dir and copy it to SHIPPED_ORACLES"
    meta = json.loads((SHIPPED_ORACLES / key / "excise_organism.json").read_text())
    assert sorted(map(tuple, meta["without"])) == sorted(f.key for f in forget)
    forgot = recall_table(oracle, forget, ("request",)).rate("request")
    kept = recall_table(oracle, retain, ("request",)).rate("request")
    baseline = world.prior_baseline(forget)
    assert forgot <= baseline + 0.05, (forgot, baseline)
    assert kept >= 0.97


def test_retrain_dir_trains_once_then_reuses_the_cache(world, tmp_path, monkeypatch):
    """The retrain path itself, on a recipe small enough to train in seconds."""
    from excise.organism import Recipe, retrain_dir

    monkeypatch.setenv("EXCISE_CACHE", str(tmp_path))
    small = Recipe(n_people=6, n_layer=1, n_embd=32, n_head=2, epochs=1)
    forget = list(excise.organism.world(0, 6).of_subject(excise.organism.world(0, 6).subjects[0]))
    path = retrain_dir(forget, rec=small, progress=False)
    assert path.parent == tmp_path / "oracles"
    meta = json.loads((path / "excise_organism.json").read_text())
    assert sorted(map(tuple, meta["without"])) == sorted(f.key for f in forget)
    assert meta["recipe"]["n_people"] == 6

    def no_training(*a, **k):
        raise AssertionError("retrain_dir trained again despite a cached oracle")

    monkeypatch.setattr("excise.organism.train.train", no_training)
    assert retrain_dir(forget, rec=small, progress=False) == path
    with pytest.raises(AssertionError, match="trained again"):         # another forget set is a miss
        retrain_dir(forget[:1], rec=small, progress=False)
