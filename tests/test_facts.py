"""Fact and FactSet validation, and how prompts become token spans."""

from __future__ import annotations

import pytest

from excise import Fact, FactSet, tokenize_prompt


def make(**kw):
    base = dict(subject="Mira Tolvanen", relation="birthplace", target="Veltrana",
                prompt="{} was born in")
    return Fact(**(base | kw))


@pytest.mark.parametrize("prompt", ["was born in", "{} and {} were born in"])
def test_prompt_needs_one_placeholder(prompt):
    with pytest.raises(ValueError, match="exactly one '\\{\\}'"):
        make(prompt=prompt)


def test_paraphrase_needs_placeholder_too():
    with pytest.raises(ValueError, match="paraphrase template"):
        make(paraphrases=("The birthplace is",))


@pytest.mark.parametrize("field", ["target", "subject", "relation"])
def test_empty_fields_refused(field):
    with pytest.raises(ValueError, match=f"Fact.{field} must be a non-empty string"):
        make(**{field: "  "})


def test_target_with_space_refused():
    with pytest.raises(ValueError, match="leading or trailing whitespace"):
        make(target=" Veltrana")


def test_template_with_trailing_space_refused():
    with pytest.raises(ValueError, match="ends with whitespace"):
        make(prompt="{} was born in ")


def test_repr_is_readable():
    f = make()
    assert repr(f) == "Fact('Mira Tolvanen' -birthplace-> 'Veltrana', prompt='{} was born in')"
    assert f.text == "Mira Tolvanen was born in Veltrana"
    fs = FactSet([f, make(relation="pet", target="owl", prompt="{} has a pet")])
    assert repr(fs) == "FactSet(2 facts, 1 subjects, relations=['birthplace', 'pet'])"


def test_factset_lookup_and_errors():
    fs = FactSet([make(), make(relation="pet", target="owl", prompt="{} has a pet")])
    assert fs.fact("Mira Tolvanen", "pet").target == "owl"
    with pytest.raises(KeyError, match="no subject 'Nobody'"):
        fs.fact("Nobody", "pet")
    with pytest.raises(KeyError, match="has no 'employer' fact"):
        fs.fact("Mira Tolvanen", "employer")
    with pytest.raises(ValueError, match="share subject"):
        FactSet([make(), make()])


def test_json_round_trip_and_field_errors(tmp_path):
    f = make(paraphrases=("{} is a native of",), questions=("Q: Where was {} born? A:",))
    f = f.with_neighbors([make(relation="pet", target="owl", prompt="{} has a pet")])
    path = tmp_path / "facts.json"
    FactSet([f]).save(path)
    back = FactSet.load(path)
    assert back[0] == f and back[0].neighbors == f.neighbors
    assert FactSet.from_json(FactSet([f]).to_json())[0] == f
    with pytest.raises(ValueError, match="for a file, use FactSet.load"):
        FactSet.from_json(str(path))
    with pytest.raises(FileNotFoundError, match="no facts file at"):
        FactSet.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="line 1 \\(fact #0\\): unknown Fact field\\(s\\) \\['answer'\\]"):
        FactSet.from_json('[{"subject": "A B", "relation": "r", "target": "x", "prompt": "{} is", "answer": 1}]')
    with pytest.raises(ValueError, match="missing required field\\(s\\) \\['prompt'\\]"):
        FactSet.from_json('[{"subject": "A B", "relation": "r", "target": "x"}]')


def test_retain_set_and_split():
    facts = FactSet(make(subject=f"Person {i}", relation=r, target="x", prompt="{} is")
                    for i in range(20) for r in ("a", "b"))
    forget, retain = facts.subjects_split(0.1, seed=1)
    assert len(forget.subjects) == 2 and len(forget) == 4
    assert not set(forget.subjects) & set(retain.subjects)
    assert len(retain) + len(forget) == len(facts)
    assert forget.subjects == facts.subjects_split(0.1, seed=1)[0].subjects
    assert len(facts.retain_set(facts[0])) == len(facts) - 1
    with pytest.raises(ValueError, match="fraction must be in"):
        facts.subjects_split(5)


def test_subject_span_on_organism(organism_model, world):
    fact = world[0]
    for family in ("request", "paraphrase", "question", "completion", "held_out"):
        for template in fact.templates(family):
            pt = tokenize_prompt(organism_model, fact, template)
            span = pt.tokens[pt.subject[0]:pt.subject[1]].tolist()
            decoded = organism_model.tokenizer.decode(span)
            assert decoded.strip() == fact.subject
            assert organism_model.tokenizer.decode(list(pt.target_ids)).strip() == fact.target


def test_subject_merged_with_neighbour_is_refused(organism_model, world):
    fact = world[0]
    with pytest.raises(ValueError, match="tokenizes to .* alone but not as that span"):
        tokenize_prompt(organism_model, fact, "The{} was born in")


def test_check_subject_names_the_closest_subjects():
    facts = FactSet([Fact("Mira Tolvanen", "birthplace", "Veltrana", "{} was born in")])
    assert facts.check_subject("Mira Tolvanen") == "Mira Tolvanen"
    with pytest.raises(ValueError, match="'Mira Tolvanan' is not a subject of these facts; did you mean 'Mira Tolvanen'"):
        facts.check_subject("Mira Tolvanan")
