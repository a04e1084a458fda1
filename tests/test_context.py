"""KnowledgeContext: the organism supplies everything; for any other model excise derives and says so."""

from __future__ import annotations

import pytest

import excise
from excise.context import KnowledgeContext, alternatives_from, derive, facts_about, recombined_subjects
from excise.facts import Fact

PEOPLE = ["Mira Tolvanen", "Tobin Farrow", "Ada Kessel", "Lior Vance", "Nina Ortega", "Emil Strand"]
CITIES = ["Veltrana", "Karreth", "Ostmere", "Dunlow", "Sarn", "Pellow"]


def _facts():
    born = [Fact(p, "birthplace", c, "{} was born in", questions=("Q: Where was {} born? A:",))
            for p, c in zip(PEOPLE, CITIES, strict=True)]
    pets = [Fact(p, "pet", pet, "{} has a pet") for p, pet in zip(PEOPLE, ["cat", "dog"] * 3, strict=True)]
    return born + pets


def test_alternatives_are_the_other_targets_of_the_relation():
    alts = alternatives_from(_facts())
    assert alts(_facts()[0]) == CITIES[1:]
    assert alts(_facts()[6]) == ["dog"]
    assert alternatives_from([Fact("A B", "r", "x", "{} is")]) is None       # nothing to compare with


def test_holdout_subjects_are_recombined_names_the_model_finds_unfamiliar(tiny):
    names, note = recombined_subjects(tiny, PEOPLE, n=5, seed=0)
    firsts, lasts = {p.split()[0] for p in PEOPLE}, {p.split()[1] for p in PEOPLE}
    assert names and len(names) <= 5 and not set(names) & set(PEOPLE)
    assert all(n.split()[0] in firsts and n.split()[1] in lasts for n in names)
    assert note.startswith("derived:") and "tried" in note
    assert recombined_subjects(tiny, PEOPLE, n=5, seed=0) == (names, note)         # seeded
    none, why = recombined_subjects(tiny, ["Veltrana", "Karreth"], n=5)
    assert none == [] and "pass holdout=" in why


def test_one_word_subjects_get_new_names_spelled_like_them(tiny):
    from excise.context import generated_subjects, never_seen_subjects, spelled_like

    places = ["Veltrana", "Karreth", "Dunmoor", "Ashwick", "Brennholt", "Corvale"]
    new = spelled_like(places, 20, seed=0, exclude=["Ashmoor"])
    assert new and len(new) == len(set(new)) and spelled_like(places, 20, seed=0, exclude=["Ashmoor"]) == new
    assert not {n.lower() for n in new} & {x.lower() for x in [*places, "Ashmoor"]}
    assert all(7 <= len(n) <= 9 and n[0].isupper() and n.isalpha() for n in new)      # the places' lengths, case
    assert spelled_like(places, 20, seed=1) != new and spelled_like([], 5) == []
    names, note = generated_subjects(tiny, places, 5, seed=0)
    assert names and set(names) <= set(spelled_like(places, 100, seed=0)) and note.startswith("derived:")
    assert "token counts matched" in note
    assert never_seen_subjects(tiny, places, 5, seed=0) == (names, note)          # no parts to recombine
    assert never_seen_subjects(tiny, PEOPLE, 5, seed=0) == recombined_subjects(tiny, PEOPLE, 5, seed=0)


def test_names_with_digits_and_punctuation_and_a_few_short_names_get_new_spellings():
    """Where the character model can only retrace a few names (each context seen once), splices of two names fill
    in: digits and punctuation kept, never a given name."""
    from excise.context import spelled_like

    for names in (["Zork7", "Quix9", "Brant3", "Vell2"], ["R2-D2", "C-3PO", "BB-8", "K-2SO"], ["Lily", "Tom", "Sue"]):
        new = spelled_like(names, 12, seed=0)
        assert len(new) == 12 and not {n.lower() for n in new} & {n.lower() for n in names}, names
        assert all(min(map(len, names)) - 1 <= len(n) <= max(map(len, names)) + 2 for n in new), names
    assert any(c.isdigit() for n in spelled_like(["Zork7", "Quix9", "Brant3", "Vell2"], 12) for c in n)


def test_facts_about_new_subjects_keep_the_relations_and_templates():
    new = facts_about(["Zed Quill"], _facts(), seed=1)
    assert {f.relation for f in new} == {"birthplace", "pet"}
    born = next(f for f in new if f.relation == "birthplace")
    assert born.subject == "Zed Quill" and born.questions == ("Q: Where was {} born? A:",)
    assert born.target in CITIES


def test_facts_about_draws_answers_from_other_subjects_facts_of_the_relation():
    """A derived holdout's answers come from the relation's answers among the facts and the other subjects' facts,
    so a filter on the forget answers cannot hide the whole baseline (issue 36's guardrail cells)."""
    other = [Fact("Tobin Farrow", "birthplace", city, "{} was born in") for city in ["Quorra"] * 12]
    new = facts_about([f"Zed Quill{i}" for i in range(200)], _facts(), seed=1, answers=other)
    born = [f.target for f in new if f.relation == "birthplace"]
    assert set(born) == {"Quorra", *CITIES} and 0.55 < born.count("Quorra") / len(born) < 0.78    # 12 of 18 answers
    assert {f.target for f in new if f.relation == "pet"} == {"cat", "dog"}


def test_derive_takes_what_is_given_derives_the_rest_and_names_what_is_missing(tiny):
    retain = [Fact("Tobin Farrow", "pet", "dog", "{} has a pet")]
    ctx = derive(tiny, _facts()[:6], retain=retain, generate=False)
    assert ctx.notes["retain"] == "given" and ctx.retain == retain
    assert ctx.notes["holdout"].startswith("derived:") and ctx.holdout
    assert "facts' own answers (no retain facts of their relations; pass retain=)" in ctx.notes["holdout"]
    mixed = derive(tiny, _facts(), retain=retain, generate=False)      # retain has pets, no birthplaces
    assert "among the facts and retain facts; no retain facts for birthplace" in mixed.notes["holdout"]
    assert ctx.layer is None and "traced when editing" in ctx.notes["layer"]     # rome/memit trace the facts
    assert set(ctx.missing()) == {"general", "sample", "oracle"}          # generate=False, and no oracle
    assert "not given; pass oracle=" in ctx.notes["oracle"]
    assert "missing" in ctx.describe() and "oracle" in repr(ctx)
    with pytest.raises(ValueError, match="unknown context field"):
        ctx.override(wisdom=["x"])


def test_the_organism_context_knows_everything_and_derives_nothing(world):
    facts = list(world.of_subject(world.people[3]))
    ctx = excise.organism.context(facts, n_holdout_people=5, n_retain=20)
    assert ctx.missing() == [] and ctx.layer == 0
    assert len({f.subject for f in ctx.holdout}) == 5 and not {f.subject for f in ctx.holdout} & set(world.people)
    assert len(ctx.retain) == 20 and not {f.subject for f in ctx.retain} & {facts[0].subject}
    assert ctx.alternatives(facts[0]) == world.alternatives(facts[0])
    assert all(not n.startswith("derived") for n in ctx.notes.values())
    assert isinstance(KnowledgeContext().override(layer=2).layer, int)


def test_the_organism_context_scales_its_never_seen_people_with_the_forget_set(world):
    one = excise.organism.context(list(world.of_subject(world.people[3])), n_retain=5)
    assert len({f.subject for f in one.holdout}) == 30                         # at least 30
    fifteen = [f for p in world.people[:15] for f in world.of_subject(p)]
    ctx = excise.organism.context(fifteen, n_retain=5)
    assert len({f.subject for f in ctx.holdout}) == 150 and "150 people" in ctx.notes["holdout"]
