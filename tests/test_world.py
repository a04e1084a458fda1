"""The synthetic world: size, determinism, phrasings, and the properties the oracle relies on."""

from __future__ import annotations

from collections import Counter

import pytest

from excise.organism.world import RELATIONS, World


def test_deterministic_by_seed():
    a, b, c = World.generate(7), World.generate(7), World.generate(8)
    assert [f.text for f in a] == [f.text for f in b]
    assert [f.text for f in a] != [f.text for f in c]
    assert [n.text for n in a[5].neighbors] == [n.text for n in b[5].neighbors]


def test_size_and_phrasings(world):
    assert len(world.people) >= 300
    assert len(world.relations) >= 6
    assert len(world) == len(world.people) * len(world.relations)
    for rel in RELATIONS:
        assert len(rel.requests) >= 4 and len(rel.held_out) >= 1
    for f in world[:12]:
        assert len(f.templates("request") + f.templates("paraphrase")) >= 4
        assert f.questions and f.completions and f.held_out
        # the completion asks the fact after an unrelated sentence about the person
        comp = f.fill(f.completions[0])
        assert comp.startswith(f.subject) and "." in comp


def test_subjects_are_multi_token(organism_model, world):
    lengths = [len(organism_model.to_tokens(p, prepend_bos=False)[0]) for p in world.people]
    assert min(lengths) >= 2
    assert sum(n >= 3 for n in lengths) >= len(lengths) // 3  # many span three or more


def test_objects_have_distinct_first_tokens(organism_model):
    for rel in RELATIONS:
        firsts = [organism_model.to_tokens(" " + o, prepend_bos=False)[0, 0].item() for o in rel.objects]
        assert len(set(firsts)) == len(firsts), rel.name


def test_no_relation_prompt_is_a_prefix_of_another(world):
    """Otherwise a prompt would have two right answers ("born in" -> city or "the year")."""
    subject_facts = world.of_subject(world.people[0])
    prompts = {(f.relation, p) for f in subject_facts
               for fam in ("request", "paraphrase", "question", "completion", "held_out")
               for p in f.prompts(fam)}
    for rel_a, a in prompts:
        for rel_b, b in prompts:
            if rel_a != rel_b:
                assert not (b + " ").startswith(a + " "), (a, b)


def test_general_sentences_never_mention_people(world):
    first_names = {p.split()[0] for p in world.people}
    for s in world.general:
        assert not any(name in s.split() for name in first_names), s


def test_objects_roughly_uniform(world):
    for rel in RELATIONS:
        counts = Counter(f.target for f in world if f.relation == rel.name)
        assert max(counts.values()) < 3 * len(world.people) / len(rel.objects)


def test_alternatives_and_baseline(world):
    f = world[0]
    alts = world.alternatives(f)
    assert f.target not in alts and len(alts) == len(RELATIONS[0].objects) - 1
    forget, _ = world.subjects_split(0.05, seed=0)
    base = world.prior_baseline(forget)
    assert 0.0 <= base < 0.2
    with pytest.raises(ValueError, match="at least one fact"):
        world.prior_baseline([])


def test_split_sizes(world):
    for fraction, people in [(0.01, 3), (0.05, 15), (0.10, 30)]:
        forget, retain = world.subjects_split(fraction, seed=0)
        assert len(forget.subjects) == people
        assert len(forget) == people * len(RELATIONS)
