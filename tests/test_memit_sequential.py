"""Sequential AlphaEdit's plumbing on the organism: the state's cache is the edited keys' sum of K K^T and
enters the next solve, undo through the state restores weights and cache, and a bare undo is caught.
(The update maths against the reference code: test_alphaedit_reference.py.)"""

from __future__ import annotations

import pytest
import torch

import excise
from excise.edit import AlphaEditState, MemitConfig, RomeConfig, memit, memit_sequence
from excise.edit.memit import _keys_and_hidden
from excise.edit.record import storage_owners
from excise.weights import linear

CFG = MemitConfig(layers=(0,), null_space=True, objective="erase_unlikelihood", v=RomeConfig(layer=0, v_steps=5),
                  progress=False)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EXCISE_CACHE", str(tmp_path / "cache"))


def weights(model):
    return {n: p.detach().clone() for n, p in storage_owners(model).items()}


def two_facts_and_preserve(world):
    facts = list(world.sample(40, seed=13))
    f1 = facts[0]
    f2 = next(f for f in facts if f.subject.split()[-1] != f1.subject.split()[-1])
    preserve = list(world.filter(lambda f: f.subject not in (f1.subject, f2.subject)).sample(40, seed=6))
    return f1, f2, preserve


def keys(model, fact):
    return _keys_and_hidden(model, [fact], 0, 0, CFG.v.n_prefixes)[0]          # [d_mlp, 1]


def solve_residual(P, K, cache, delta, ridge):
    """How far (P (K K^T + cache) + ridge I) delta is from rank one along P K (the solve's right side)."""
    M = (P @ (K @ K.T + cache) + ridge * torch.eye(len(P), dtype=P.dtype)) @ delta
    u = P @ K[:, 0]
    return float((M - torch.outer(u, M.T @ u / (u @ u))).norm() / M.norm())


def test_the_cache_enters_the_next_edit_and_undo_goes_through_the_state(organism_model, world):
    model = organism_model
    f1, f2, preserve = two_facts_and_preserve(world)
    before = weights(model)
    W = linear(model, 0, "mlp.out").W
    state = AlphaEditState.build(model, CFG, preserve=preserve)
    P = state.P[0].double()
    assert 0 < state.source["null_dims"][0] < model.cfg.d_mlp and "40 preserve facts" in state.summary()
    W0 = W.detach().double().clone()
    r1 = memit(model, [f1], CFG, state=state)
    W1 = W.detach().double().clone()
    try:
        K1 = keys(model, f1).double()                   # on the edited model, as AlphaEdit recomputes them
        # cache vs K K^T: the same float32 keys, two float64 products (d_mlp terms, entries <= ~1): rounding 1e-13,
        # so rtol 1e-6 leaves room for the keys' own float32 rounding only, on any float path
        assert len(state) == 1 and torch.allclose(state.cache(0), K1 @ K1.T, rtol=1e-6, atol=1e-8)
        assert torch.allclose(P @ (W1 - W0), W1 - W0, atol=1e-5)             # the update lives in the null space
        assert solve_residual(P, K1, torch.zeros_like(P), W1 - W0, CFG.null_ridge) < 1e-4
        r2 = memit(model, [f2], CFG, state=state)
        W2 = W.detach().double().clone()
        K2 = keys(model, f2).double()
        assert torch.allclose(state.cache(0), K1 @ K1.T + K2 @ K2.T, rtol=1e-6, atol=1e-6)
        assert r2.meta["alphaedit"]["edit"] == 2
        # the second solve used edit 1's keys as the cache (and not nothing)
        assert solve_residual(P, K2, K1 @ K1.T, W2 - W1, CFG.null_ridge) < 1e-4
        assert solve_residual(P, K2, torch.zeros_like(P), W2 - W1, CFG.null_ridge) > 1e-2

        with pytest.raises(ValueError, match="not the last edit"):
            state.undo(r1)
        r2.undo()                                        # behind the state's back
        with pytest.raises(ValueError, match=r"state.undo\(record\)"):
            memit(model, [f2], CFG, state=state)
        state.undo(r2)                                   # drops its keys (weights already restored)
        assert len(state) == 1 and torch.allclose(state.cache(0), K1 @ K1.T, rtol=1e-6, atol=1e-8)
        state.undo(r1)
        assert len(state) == 0 and not state.cache(0).any()
    finally:
        while state.records:                             # whatever is left, through the state
            state.undo(state.records[-1])
    assert all(torch.equal(before[n], v) for n, v in weights(model).items())


def test_memit_sequence_with_and_without_the_null_space_undoes_all(organism_model, world):
    model = organism_model
    f1, f2, preserve = two_facts_and_preserve(world)
    before = weights(model)
    seen = []
    seq = memit_sequence(model, [f1, f2], CFG, preserve=preserve, progress=False,
                         after_each=lambda i, r: seen.append(i) or {"i": i})
    assert len(seq) == 2 and seen == [0, 1] and len(seq.state) == 2
    seq.undo()
    assert len(seq.state) == 0
    assert all(torch.equal(before[n], v) for n, v in weights(model).items())

    plain = MemitConfig(layers=(0,), mom2_weight=300.0, objective="erase_unlikelihood", v=RomeConfig(layer=0, v_steps=5),
                        progress=False)
    seq = memit_sequence(model, [f1, f2], plain, progress=False, sample=excise.organism.corpus()[::8])
    assert seq.state is None and len(seq) == 2
    seq.undo()
    assert all(torch.equal(before[n], v) for n, v in weights(model).items())


def test_state_and_config_must_agree(organism_model, world):
    with pytest.raises(ValueError, match="null_threshold_mode"):
        MemitConfig(layers=(0,), null_threshold_mode="percent")
    f1, _, preserve = two_facts_and_preserve(world)
    state = AlphaEditState.build(organism_model, CFG, preserve=preserve[:10])
    with pytest.raises(ValueError, match="built for layers"):
        memit(organism_model, [f1], MemitConfig(layers=(0,), null_space=True, null_threshold=1e-3), state=state)
    with pytest.raises(ValueError, match="null_space=True"):
        memit(organism_model, [f1], MemitConfig(layers=(0,)), state=state)
    # 300 facts' 2360 tokens span the 512 keys at layer 0; their smallest singular value is about 1e-3
    with pytest.warns(UserWarning, match="null space at layer"):
        AlphaEditState.build(organism_model, MemitConfig(layers=(0,), null_space=True, null_threshold=1e-4),
                             preserve=list(world.sample(300, seed=4)))
