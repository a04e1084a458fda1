"""The training recipe: seeded, reproducible, and blind to what it is told to forget."""

from __future__ import annotations

import pytest
import torch

from excise.organism.train import Recipe, corpus, train
from excise.organism.world import World

TINY = Recipe(n_people=8, n_layer=1, n_embd=32, n_head=2, epochs=1, batch_size=16, warmup_steps=2)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_same_seed_same_weights_bit_for_bit():
    a, _ = train(TINY, progress=False)
    b, _ = train(TINY, progress=False)
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c, _ = train(Recipe(**{**TINY.__dict__, "seed": 1}), progress=False)
    assert not all(torch.equal(wa[k], v) for k, v in _weights(c).items())


def test_training_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(TINY, progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_corpus_without_forget_facts_never_names_them():
    world = World.generate(TINY.world_seed, TINY.n_people)
    forget = world.of_subject(world.people[0])
    texts = corpus(world, without=forget)
    assert not any(world.people[0] in t for t in texts)
    assert any(world.people[1] in t for t in texts)


def test_corpus_refuses_unknown_facts():
    from excise import Fact

    world = World.generate(0, 8)
    stranger = Fact("No Body", "pet", "owl", "{} has a pet")
    with pytest.raises(ValueError, match="cannot train without facts the world does not have"):
        corpus(world, without=[stranger])


def test_recipe_validation():
    with pytest.raises(ValueError, match="divisible by n_head"):
        Recipe(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        Recipe(epochs=0)
