"""EditRecord and ablation: bit-exact undo/apply, save/load, scope, failure safety."""

from __future__ import annotations

import pytest
import torch

import excise
from excise import Component
from excise.edit.ablation import ablate
from excise.edit.record import EditRecord, recording, storage_owners
from excise.weights import linear
from tests.conftest import build_tiny_gpt2

TEXTS = ["Mira Tolvanen was born in Veltrana.", "The cat sat on the mat.",
         "Q: Where was Tobin Farrow born? A: Karreth"]




def weights(model):
    return {n: p.detach().clone() for n, p in storage_owners(model).items()}


def same(a, b, skip=()):
    return all(torch.equal(a[n], b[n]) for n in a if n not in skip)


def logits(model, text="Mira Tolvanen was born in"):
    with torch.no_grad():
        return model(model.to_tokens(text))


COMPONENTS = [Component(0, "neuron", 3), Component(1, "neuron", 40), Component(1, "head", 2)]


@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ablation_equals_the_hooked_ablation(tiny, mode):
    from excise.edit.ablation import mean_activations

    means = mean_activations(tiny, TEXTS, [0, 1])

    def neuron_hook(layer, idx):
        def hook(act, hook):
            act = act.clone()
            act[..., idx] = 0 if mode == "zero" else means[f"blocks.{layer}.mlp.hook_post"][idx]
            return act
        return hook

    def head_hook(act, hook):
        act = act.clone()
        act[:, :, 2] = 0 if mode == "zero" else means["blocks.1.attn.hook_z"][2]
        return act

    hooks = [("blocks.0.mlp.hook_post", neuron_hook(0, 3)), ("blocks.1.mlp.hook_post", neuron_hook(1, 40)),
             ("blocks.1.attn.hook_z", head_hook)]
    tokens = tiny.to_tokens("Mira Tolvanen was born in")
    with torch.no_grad(), tiny.hooks(fwd_hooks=hooks):
        expected = tiny(tokens)
    original = logits(tiny)
    record = ablate(tiny, COMPONENTS, mode=mode, sample=TEXTS)
    assert torch.allclose(logits(tiny), expected, atol=1e-5)
    assert not torch.allclose(logits(tiny), original, atol=1e-4)
    assert set(record.touched()) == {Component(0, "neuron", 3), Component(1, "neuron", 40),
                                     Component(1, "head", 2)} | (
        {Component(0, "mlp"), Component(1, "mlp"), Component(1, "attn")} if mode == "mean" else set())


def test_outside_the_mask_is_bit_identical_and_undo_is_exact(tiny):
    before = weights(tiny)
    record = ablate(tiny, COMPONENTS)
    after = weights(tiny)
    touched = set(record.parameters_touched())
    assert touched and same(before, after, skip=touched)
    for name in touched:         # inside a touched matrix, only the ablated rows moved
        assert not torch.equal(before[name], after[name])
    W_out = linear(tiny, 1, "mlp.out").W
    assert torch.count_nonzero(W_out[40]) == 0 and torch.count_nonzero(W_out[41]) > 0
    record.undo()
    assert same(before, weights(tiny))
    record.apply()
    assert same(after, weights(tiny))


def test_save_load_apply_on_a_fresh_copy(tiny, tiny_dir, tmp_path):
    record = ablate(tiny, COMPONENTS, mode="mean", sample=TEXTS)
    edited = weights(tiny)
    path = tmp_path / "edit.safetensors"
    record.save(path)
    fresh = excise.load(tiny_dir, device="cpu")
    loaded = EditRecord.load(path, fresh)
    assert loaded.method == "ablate_mean" and loaded.hyper["mode"] == "mean"
    loaded.apply()
    assert same(edited, weights(fresh))
    loaded.undo()
    assert not same(edited, weights(fresh))


def test_record_refuses_another_model(tiny, tmp_path):
    record = ablate(tiny, COMPONENTS)
    path = tmp_path / "edit.safetensors"
    record.save(path)
    other_dir = tmp_path / "other"
    build_tiny_gpt2(other_dir, seed=99, n_layer=2, init_range=0.2)
    other = excise.load(other_dir, device="cpu")
    with pytest.raises(ValueError, match="made on another model"):
        EditRecord.load(path, other)
    bigger_dir = tmp_path / "bigger"
    build_tiny_gpt2(bigger_dir, seed=2, n_layer=3)
    with pytest.raises(ValueError, match="different architecture"):
        EditRecord.load(path, excise.load(bigger_dir, device="cpu"))
    with pytest.raises(ValueError, match="not the unedited values"):
        record.apply(other)


def test_exception_mid_edit_restores_weights(tiny):
    before = weights(tiny)
    view = linear(tiny, 0, "mlp.out")
    with pytest.raises(RuntimeError, match="injected"):
        with recording(tiny, "broken", scope=[view.weight]), torch.no_grad():
            view.W[5] = 123.0
            raise RuntimeError("injected failure")
    assert same(before, weights(tiny))


def test_exception_inside_ablate_restores_weights(tiny, monkeypatch):
    before = weights(tiny)
    import excise.edit.ablation as ab

    calls = {"n": 0}
    real = ab.linear

    def flaky(model, layer, name):
        calls["n"] += 1
        if calls["n"] > 4:           # after the first layer's rows were already zeroed
            raise RuntimeError("injected failure")
        return real(model, layer, name)

    monkeypatch.setattr(ab, "linear", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        ablate(tiny, COMPONENTS)
    assert same(before, weights(tiny))


def test_change_outside_scope_is_caught_and_undone(tiny):
    before = weights(tiny)
    inside, outside = linear(tiny, 0, "mlp.out"), linear(tiny, 1, "mlp.out")
    with pytest.raises(RuntimeError, match="outside its declared scope"):
        with recording(tiny, "sloppy", scope=[inside.weight]), torch.no_grad():
            inside.W[0] = 1.0
            outside.W[0] += 1.0
    # the scope is restored; the out-of-scope change is the caller's bug to undo
    owner = {p.untyped_storage().data_ptr(): n for n, p in storage_owners(tiny).items()}
    inside_name = owner[inside.weight.untyped_storage().data_ptr()]
    assert torch.equal(weights(tiny)[inside_name], before[inside_name])


def test_shared_storage_is_recorded_once_and_mapped_to_heads(tiny):
    q = linear(tiny, 1, "attn.q")
    with recording(tiny, "touch_q", scope=[q.weight]) as box, torch.no_grad():
        q.W[:, tiny.cfg.d_head * 3] += 1.0          # one column of head 3's query
    record = box["record"]
    assert len(record.changes) == 1 and record.changes[0].name.endswith("qkv._original_component.weight")
    assert record.touched() == [Component(1, "head", 3)]


def test_bad_input(tiny):
    with pytest.raises(ValueError, match="mask is empty"):
        ablate(tiny, [])
    with pytest.raises(ValueError, match="the model has 2 layers"):
        ablate(tiny, [Component(5, "neuron", 1)])
    with pytest.raises(ValueError, match="drop position="):
        ablate(tiny, [Component(0, "neuron", 1, position=2)])
    with pytest.raises(ValueError, match="text sample"):
        ablate(tiny, [Component(0, "neuron", 1)], mode="mean")
    with pytest.raises(ValueError, match="only neuron, head"):
        ablate(tiny, [Component(0, "resid")])


def test_original_is_the_unedited_copy_and_leaves_the_model_edited(tiny):
    before = excise.fingerprint(tiny)
    record = ablate(tiny, COMPONENTS)
    after = excise.fingerprint(tiny)
    assert after != before
    reference = record.original()
    assert excise.fingerprint(reference) == before
    assert excise.fingerprint(tiny) == after
    assert record.original() is reference                       # made once
    assert torch.equal(logits(reference), logits(record.undo()))
