"""Notebook display: each result's `_repr_html_` says what matters first, and `repr` stays one short line."""

from __future__ import annotations

import base64
import re
from html import unescape

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import excise
from excise import Component
from excise.edit.ablation import ablate
from excise.experiments import Entanglement
from excise.locate import Localization
from excise.verify import AuditConfig, audit


def short(obj) -> str:
    text = repr(obj)
    assert "\n" not in text and len(text) < 240, text
    return text


def text_of(html: str) -> str:
    """The visible text, tags dropped (for order checks)."""
    return unescape(re.sub(r"<[^>]+>", " ", re.sub(r'src="data:[^"]+"', "", html)))


@pytest.fixture(scope="module")
def person(world):
    return world.of_subject(world.people[0])


def test_fact_and_factset_are_small_tables(person):
    fact = person[0]
    html = fact._repr_html_()
    assert html.index(fact.subject) < html.index("<table")
    for family in ("request", "paraphrase", "question"):
        assert family in html
        for prompt in fact.prompts(family):
            assert prompt in text_of(html)
    html = person._repr_html_()
    assert f"FactSet: {len(person)} facts, 1 subjects" in html
    assert all(f.target in html for f in person) and html.count("<tr>") == len(person) + 1
    short(fact), short(person)


def test_long_factsets_are_cut_with_a_count(world):
    html = world._repr_html_()
    assert html.count("<tr>") == 21 and f"{len(world) - 20} more rows" in html


def test_recall_table_leads_with_the_overall_rates(organism_model, person):
    table = excise.recall_table(organism_model, person, ("request", "question"))
    html = table._repr_html_()
    first = text_of(html).split("relation")[0]
    assert "recall" in first and "request 1.000" in first and "question" in first
    assert all(rel in html for rel in table.relations) and "all" in html
    short(table)


def test_localization_shows_its_figure_and_top_components():
    loc = Localization(
        method="causal_trace",
        scores={"mlp": torch.arange(12.0).reshape(3, 4), "neuron": torch.zeros(3, 8).index_fill_(1, torch.tensor([5]), 2.0)},
        axes={"mlp": ("layer", "position"), "neuron": ("layer", "index")},
        tokens=["<bos>", "Mira", " was", " born"], subject=(1, 2),
        meta={"prompt": "Mira was born", "fact": {"target": "Veltrana"}, "p_clean": 0.9, "p_corrupt": 0.1})
    open_before = plt.get_fignums()
    html = loc._repr_html_()
    assert plt.get_fignums() == open_before                        # the figure was closed, not left to pyplot
    png = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', html).group(1))
    assert png.startswith(b"\x89PNG") and len(png) < 150_000       # small: modest dpi
    text = text_of(html)
    assert text.index("'Mira was born' -> 'Veltrana'") < text.index("top mlp") < text.index("top neuron")
    assert "p(target) clean 0.900, subject noised 0.100" in text
    assert "L2.mlp@3" in text and "' born'" in text                 # the peak, with its token
    assert "L0.neuron[5]" in text
    short(loc)


def test_edit_record_shows_what_changed(tiny):
    record = ablate(tiny, [Component(0, "neuron", 3), Component(1, "neuron", 7)], mode="zero")
    html = record._repr_html_()
    text = text_of(html)
    assert text.index(f"{record.n_changed} weights changed") < text.index("what changed")
    for change in record.changes:
        assert change.name.replace("._original_component", "") in text
        assert f">{change.n_changed}<" in html
    for key in record.hyper:
        assert key in text                                          # the edit's config
    short(record)
    record.undo()


def test_audit_report_puts_the_verdict_first(organism_model, person):
    facts = list(person)
    report = audit(organism_model, facts, config=AuditConfig(attacks=("probes", "logit_lens")), progress=False,
                   context=excise.organism.context(facts, n_holdout_people=2, n_retain=10))
    html = report._repr_html_()
    text = text_of(html)
    assert text.lstrip().startswith("verdict (edited vs never-seen facts): ")
    first = text.split("two-sided Mann-Whitney")[0]
    for attack, v in report.leakage().items():
        assert attack in first and v.verdict in first
    assert text.index("verdict") < text.index("recall: request") < text.index("attack success: probes")
    short(report)


def test_a_report_without_never_seen_facts_says_so_first(organism_model, person):
    facts = list(person)[:2]
    report = audit(organism_model, facts, config=AuditConfig(attacks=("probes",)), progress=False)
    text = text_of(report._repr_html_())
    assert text.lstrip().startswith("verdict: none") and "not computed" in text


def test_entanglement_leads_with_the_correlation():
    n = 4
    facts = [{"subject": s, "relation": r, "target": "x"} for s in "ab" for r in ("born", "job")]
    ent = Entanglement(facts, np.ones((n, n), bool), -np.eye(n) - 0.1 * np.arange(n * n).reshape(n, n) / n,
                       np.linspace(0, 1, n * n).reshape(n, n), np.ones(n, bool), {"k": 8})
    text = text_of(ent._repr_html_())
    assert text.lstrip().startswith("4 facts: Spearman rho(overlap, interference)")
    assert "same subject" in text and "unrelated" in text
    short(ent)
