"""One name per deletion method, in the API, the CLI and the benches; a user's own method registers from a notebook."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import excise
from excise.cli import main
from excise.methods import METHODS, Method, delete, register
from excise.registry import Registry
from tests.plugins import registered_toys

EVERY = ("ga", "graddiff", "kl", "npo", "simnpo", "dpo", "swap", "rmu", "undo", "rome", "memit", "alphaedit", "ablate",
         "task_vector", "sisa")      # sisa registered by excise.organism (its model is a SISA ensemble)


def test_every_method_has_one_name_in_the_registry_and_the_cli(capsys):
    assert METHODS.names() == EVERY
    with pytest.raises(SystemExit):
        main(["edit", "--help"])
    help_text = capsys.readouterr().out
    for m in METHODS:
        assert f"  {m.name:<11}  {m.summary}" in help_text
        assert dataclasses.is_dataclass(m.Config) and m.Config.__dataclass_params__.frozen, m.name


def test_an_unknown_name_is_refused_with_the_known_ones(organism_model, world, capsys):
    with pytest.raises(ValueError, match="unknown deletion method 'zap'; choose one of ga, graddiff, kl, npo"):
        delete(organism_model, world[:1], "zap")
    with pytest.raises(ValueError, match="rmu has no option 'beta'; its options are alpha, batch_size"):
        delete(organism_model, world[:1], "rmu", retain=world[1:5], beta=0.1)
    with pytest.raises(ValueError, match="npo takes no layer"):
        delete(organism_model, world[:1], "npo", retain=world[1:5], neurons=0, layer=0)
    with pytest.raises(ValueError, match="needs retain: retain facts"):
        delete(organism_model, world[:1], "graddiff", neurons=0)


def test_a_registry_refuses_a_taken_name_and_bad_plugins():
    r = Registry("thing")
    r.register(type("A", (), {"name": "a"})())
    with pytest.raises(ValueError, match="a thing named 'a' is already registered"):
        r.register(type("B", (), {"name": "a"})())
    with pytest.raises(ValueError, match="without commas"):
        r.register(type("C", (), {"name": "x,y"})())
    with pytest.raises(TypeError, match="Method"):      # (typeguard checks it first in the tests)
        register(object())

    class NoConfig(Method):
        name, summary, Config = "bad", "no dataclass", dict
    with pytest.raises(ValueError, match="Config must be a dataclass"):
        register(NoConfig())


def test_a_users_method_registers_from_a_notebook(organism_model, world, capsys, tmp_path):
    facts = list(world.of_subject(world.people[1]))
    before = {n: p.detach().clone() for n, p in organism_model.named_parameters()}
    with registered_toys() as toy:
        assert "toy_half_layer" in METHODS
        with pytest.raises(SystemExit):
            main(["edit", "--help"])
        assert "toy_half_layer  toy: zero the first half of one block's MLP neurons" in capsys.readouterr().out
        record = delete(organism_model, facts, toy.name, layer=1)
        try:
            assert {c.layer for c in record.touched()} == {1}
            assert len(record.touched()) == organism_model.cfg.d_mlp // 2
        finally:
            record.undo()
        facts_file = tmp_path / "facts.json"
        excise.FactSet(facts).save(facts_file)
        assert main(["edit", "organism", "--facts", str(facts_file), "--method", toy.name, "--option", "share=0.25",
                     "--out", str(tmp_path / "toy.safetensors")]) == 0
        saved = excise.edit.EditRecord.load(tmp_path / "toy.safetensors", organism_model)
        assert saved.method == "ablate_zero" and len(saved.touched()) == organism_model.cfg.d_mlp // 4
    assert "toy_half_layer" not in METHODS
    assert all(torch.equal(before[n], p) for n, p in organism_model.named_parameters())


def test_cli_options_are_cast_by_the_config_field_types(tmp_path):
    from excise.methods import get, parse_option

    assert parse_option(get("undo"), "teacher=npo") == ("teacher", "npo")
    assert parse_option(get("npo"), "steps=50") == ("steps", 50)
    assert parse_option(get("npo"), "families=request,question") == ("families", ("request", "question"))
    assert parse_option(get("rome"), "layer=none") == ("layer", None)
    assert parse_option(get("memit"), "through-edit=false") == ("through_edit", False)
    with pytest.raises(ValueError, match="npo option steps takes a int, got 'many'"):
        parse_option(get("npo"), "steps=many")
    with pytest.raises(ValueError, match="takes KEY=VALUE"):
        parse_option(get("npo"), "steps")


def test_every_attack_has_one_name_and_a_users_attack_joins_the_audit(organism_model, world):
    from excise.verify import ATTACKS, AuditConfig, audit, audited, defaults

    new = ("quantization", "exact_memorization", "extraction_strength", "extraction_strength_full", "gradnorm",
           "reference", "depth")
    assert ATTACKS.names() == ("probes", "logit_lens", "head_projection", "relearn", "membership", "truth_ratio", *new)
    assert audited() == ("probes", "logit_lens", "relearn", "membership", *new)
    assert defaults() == AuditConfig().attacks == ("probes", "logit_lens", "relearn", "membership")   # the rest: named
    forget = list(world.of_subject(world.people[2]))
    holdout = list(world.holdout(6, seed=3))
    with registered_toys():
        assert audited()[-1] == defaults()[-1] == "toy_request_only" and AuditConfig().attacks == defaults()
        report = audit(organism_model, forget, config=AuditConfig(attacks=("probes", "toy_request_only")),
                       holdout=holdout, progress=False)
        assert report.success("edited", "toy_request_only") == 1.0          # the original recalls every fact
        assert report.leakage()["toy_request_only"].verdict == "leaks"
        assert "attack success: toy_request_only (top-20)" in report.to_markdown()
        assert "leakage: toy_request_only" in report.to_markdown()
        back = type(report).from_json(report.to_json())
        assert back.success("edited", "toy_request_only") == 1.0
    with pytest.raises(ValueError, match="unknown attacks"):
        AuditConfig(attacks=("toy_request_only",))


def test_a_named_model_resolves_through_the_one_registry(tmp_path):
    from pathlib import Path

    from excise.models import NAMED, ModelLoadError, register_model

    assert {"organism", "stories260k", "tofu-full", "tofu-retain99"} <= set(NAMED.names())
    assert NAMED.get("organism").context is not None and NAMED.get("stories260k").context is None
    here = Path(__file__).parent / "data" / "foreign" / "gpt2"
    register_model("my-gpt2", lambda: here, "a user's checkpoint under a name")
    try:
        model = excise.load("my-gpt2")
        assert model.cfg.n_layers == excise.load(here).cfg.n_layers
        with pytest.raises(ValueError, match="a named model named 'my-gpt2' is already registered"):
            register_model("my-gpt2", lambda: here)
    finally:
        NAMED.unregister("my-gpt2")

    def missing():
        raise ModelLoadError("not built yet: run make-my-model")
    register_model("not-here", missing)
    try:
        with pytest.raises(ModelLoadError, match="not built yet"):
            excise.load("not-here")
    finally:
        NAMED.unregister("not-here")
