"""Greedy decoding: the KV-cached path equals plain forwards token for token, on three real models.

This is the test that catches an upstream release breaking generation through
the TransformerBridge: with transformers 5.24.0 the cached path decodes the
TOFU organism's first answer as "The Nuled Love Love Love ..." while the
reference says "The full name of the fictitious author ...", and
`test_cached_decoding_equals_plain_forwards` fails on it (checked by hand
when 5.24.0 was excluded from the supported range; see pyproject.toml).
"""

from __future__ import annotations

import warnings

import pytest

import excise
from excise import generation, tofu
from excise.scoring import encode


def _organism_prompts():
    world = excise.organism.world()
    facts = [world.fact(p, r) for p in world.people[:3] for r in ("birthplace", "employer")]
    return [f.fill(t) for f in facts for t in (f.prompt, f.questions[0])]


def _tofu_prompts():
    return [q.prompt for q in tofu.load("forget01")[::7]]


def _stories_prompts():
    return ["Once upon a time, there was a little girl named", "The dog was very", "One day, Tom went to the park"]


CASES = {
    # model, prompts (different lengths, so the cached path pads on the left), new tokens
    "organism": ("organism", _organism_prompts, 12),
    "tofu": (None, _tofu_prompts, 40),
    "stories260k": ("stories260k", _stories_prompts, 30),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    spec, prompts, n = CASES[request.param]
    if spec is None:
        from excise.tofu.organism import model_dir
        spec = model_dir("full")
    model = excise.load(spec, device="cpu")
    return request.param, model, prompts(), n


def test_cached_decoding_equals_plain_forwards(case):
    name, model, prompts, n = case
    rows = encode(model, prompts)
    assert len({len(r) for r in rows}) > 1, "prompts of one length would not exercise the left padding"
    eos = model.tokenizer.eos_token_id
    cached = generation.greedy_cached(model, rows, n, eos)
    reference = generation.greedy_uncached(model, rows, n, eos)
    assert cached == reference
    assert sum(len(r) for r in reference) >= 2 * len(rows)      # real continuations, not an immediate EOS
    assert [len(r) for r in generation.greedy_uncached(model, rows, 2, None)] == [2] * len(rows)
    if name == "tofu":          # the organism answers its own training questions word for word
        said = model.tokenizer.decode(reference[0], skip_special_tokens=True)
        assert said.strip().startswith("The full name of the fictitious author born in Kuwait City"), said


def test_greedy_answers_match_the_reference_and_stop_at_eos(case):
    name, model, prompts, n = case
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)          # the cached path passed its own check
        out = generation.greedy(model, prompts, n, batch_size=2)    # several batches
    eos = model.tokenizer.eos_token_id
    assert out == generation.greedy_uncached(model, encode(model, prompts), n, eos)
    assert all(eos not in o for o in out)


def test_a_broken_cache_is_caught_and_answered_by_the_reference(organism_model, monkeypatch):
    prompts = _organism_prompts()
    truth = generation.greedy(organism_model, prompts, 6)

    def garbage(model, rows, n, eos=None):
        return [[5] * n for _ in rows]

    monkeypatch.setattr(generation, "greedy_cached", garbage)
    with pytest.warns(RuntimeWarning, match="disagrees with plain forwards.*transformers"):
        assert generation.greedy(organism_model, prompts, 6) == truth


def test_bad_lengths_are_explained(organism_model):
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        generation.greedy(organism_model, ["Q: Hi A:"], 0)
    n_ctx = organism_model.cfg.n_ctx
    with pytest.raises(ValueError, match=f"context is {n_ctx}.*lower max_new_tokens"):
        generation.greedy(organism_model, ["Q: Hi A:"], n_ctx)
