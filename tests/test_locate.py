"""locate: properties on tiny random models, and the planted-fact check on the organism."""

from __future__ import annotations

import pytest
import torch

import excise
from excise import Component, Fact
from excise.locate import (
    Localization,
    TraceConfig,
    activation_patching,
    attribution_patching,
    causal_trace,
    fisher,
    fisher_diagonal,
    trace_one_at_a_time,
)
from excise.locate.fisher import FisherConfig
from tests.conftest import build_tiny_gpt2

FACT = Fact("Mira Tolvanen", "birthplace", "Veltrana", "{} was born in",
            paraphrases=("The cat sat on the mat near {}",))
# Same template, the two name words swapped: as many tokens, a different answer.
SWAPPED = Fact("Tolvanen Mira", "birthplace", "Karreth", "{} was born in")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_locate")
    build_tiny_gpt2(path, seed=1, n_layer=3, init_range=0.3)
    return excise.load(path, device="cpu")


def _no_hooks_left(model) -> bool:
    return all(not hp._forward_hooks and not hp._backward_hooks for hp in model.hook_dict.values())


@pytest.mark.parametrize("window", [1, 3])
def test_batched_trace_equals_one_at_a_time(tiny, window):
    cfg = TraceConfig(n_samples=4, window=window, batch_size=7)   # odd batch: rows split across forwards
    batched = causal_trace(tiny, FACT, config=cfg)
    loop = trace_one_at_a_time(tiny, FACT, config=cfg)
    for kind in ("resid", "mlp", "attn"):
        assert torch.allclose(batched.scores[kind], loop[kind], atol=1e-5), kind
    assert batched.scores["resid"].shape == (3, len(batched.tokens))
    assert _no_hooks_left(tiny)


def test_trace_is_seeded(tiny):
    a = causal_trace(tiny, FACT, n_samples=3, seed=5)
    b = causal_trace(tiny, FACT, n_samples=3, seed=5)
    c = causal_trace(tiny, FACT, n_samples=3, seed=6)
    assert torch.equal(a.scores["mlp"], b.scores["mlp"])
    assert not torch.equal(a.scores["mlp"], c.scores["mlp"])


def test_restoring_the_last_resid_restores_the_clean_probability(tiny):
    trace = causal_trace(tiny, FACT, n_samples=3)
    last = len(trace.tokens) - 1
    assert trace.scores["resid"][-1, last] == pytest.approx(trace.meta["p_clean"], abs=1e-5)
    # before the subject nothing was corrupted, so restoring there changes nothing (the same forward: bit-equal but
    # for batch-position rounding, eps32 x p <= 1e-7)
    assert torch.allclose(trace.scores["resid"][:, 0], torch.tensor(trace.meta["p_corrupt"]), atol=1e-6)


def test_patching_clean_into_itself_is_zero(tiny):
    loc = activation_patching(tiny, FACT, ("resid", "mlp", "attn", "head", "neuron"), corrupt=FACT)
    for kind, s in loc.scores.items():
        assert s.abs().max() <= 1e-5, kind          # float32 noise of batched vs single rows
    # the engine itself, with no plan skipped as a provable no-op
    from excise.locate.interventions import Restore, run_plans, target_metric

    pt = excise.tokenize_prompt(tiny, FACT)
    metric = target_metric(len(pt.tokens) - 1, pt.target_ids[0], "logprob")
    plans = [[], *([Restore(f"blocks.{l}.mlp.hook_post", "unit", p, 5)] for l in range(3)
                   for p in range(len(pt.tokens))),
             [Restore("blocks.1.hook_resid_post", "vector", None)]]
    values = run_plans(tiny, pt.tokens, plans, metric, batch_size=4)
    assert (values - values[0]).abs().max() <= 1e-5


def test_patching_a_pair_changes_something_and_heads_per_position(tiny):
    loc = activation_patching(tiny, FACT, ("resid", "head"), corrupt=SWAPPED, head_positions=True)
    last = len(loc.tokens) - 1
    # the clean final residual stream at the last position gives back the whole clean metric
    assert loc.scores["resid"][-1, last] == pytest.approx(
        loc.meta["metric_clean"] - loc.meta["metric_corrupt"], abs=1e-4)
    assert loc.scores["head"].shape == (3, len(loc.tokens), 4)
    assert loc.scores["head"].abs().max() > 0


def test_attribution_equals_patching_where_the_model_is_linear(tiny):
    """With the final LayerNorm's scale frozen, the last block's neurons reach the
    logit difference linearly, so the first-order estimate must be exact."""
    last = len(excise.tokenize_prompt(tiny, FACT).tokens) - 1

    def frozen_scale(scale, hook):
        return torch.ones_like(scale)

    with tiny.hooks(fwd_hooks=[("ln_final.hook_scale", frozen_scale)]):
        exact = activation_patching(tiny, FACT, ("neuron",), corrupt=SWAPPED, layers=[2], neuron_position=last)
        approx = attribution_patching(tiny, FACT, ("neuron",), corrupt=SWAPPED, neuron_position=last)
    e, a = exact.scores["neuron"][2], approx.scores["neuron"][2]
    assert e.abs().max() > 0.1
    assert torch.allclose(e, a, atol=1e-4 * float(e.abs().max()))
    assert torch.isnan(exact.scores["neuron"][0]).all()       # layers not asked for are NaN


def test_attribution_tracks_patching_for_heads(tiny):
    exact = activation_patching(tiny, FACT, ("head",), n_samples=3)
    approx = attribution_patching(tiny, FACT, ("head",), n_samples=3)
    corr = torch.corrcoef(torch.stack([exact.scores["head"].flatten(), approx.scores["head"].flatten()]))[0, 1]
    assert corr > 0.5


def test_fisher_is_zero_where_the_loss_does_not_reach(tiny):
    """Position embeddings past the sequence never touch the loss: their Fisher is exactly 0.
    (Token embeddings are tied to the unembedding here, so every row gets a gradient.)"""
    F = fisher_diagonal(tiny, [FACT], FisherConfig(progress=False))
    pt = excise.tokenize_prompt(tiny, FACT)
    n = len(pt.tokens) + len(pt.target_ids) - 1         # prompt + target minus the last target token
    W_pos = tiny.pos_embed._original_component.weight
    assert torch.count_nonzero(F[id(W_pos)][n:]) == 0
    assert (F[id(W_pos)][:n].sum(1) > 0).all()


def test_fisher_scores_and_ratio(tiny):
    other = Fact("Tobin Farrow", "birthplace", "Karreth", "{} was born in")
    cfg = FisherConfig(progress=False)
    forget = fisher(tiny, FACT, config=cfg)
    ratio = fisher(tiny, FACT, retain=[other], config=cfg)
    assert forget.meta["score"] == "forget" and ratio.meta["score"] == "ratio"
    assert forget.scores["neuron"].shape == (3, tiny.cfg.d_mlp)
    assert forget.scores["head"].shape == (3, tiny.cfg.n_heads)
    # a layer's MLP total is its neurons plus the output bias
    assert (forget.scores["mlp"] >= forget.scores["neuron"].sum(1) - 1e-6).all()
    retain = fisher(tiny, other, config=cfg)
    expected = forget.scores["neuron"] / (retain.scores["neuron"] + cfg.eps)
    assert torch.allclose(ratio.scores["neuron"], expected, rtol=1e-5)
    per_batch = fisher(tiny, [FACT, other], config=FisherConfig(per_example=False, batch_size=2, progress=False))
    assert per_batch.meta["per_example"] is False


def test_bad_input_is_explained(tiny):
    with pytest.raises(ValueError, match="fisher needs at least one fact"):
        fisher(tiny, [])
    with pytest.raises(ValueError, match="layer 7 is out of range: the model has 3 layers"):
        activation_patching(tiny, FACT, ("neuron",), layers=[7])
    with pytest.raises(ValueError, match="exactly one"):
        causal_trace(tiny, FACT, template="was born in")
    with pytest.raises(ValueError, match="tokenizes to .* alone but not as that span"):
        causal_trace(tiny, FACT, template="x{} was born in")
    with pytest.raises(ValueError, match="causal_trace kinds must be among"):
        causal_trace(tiny, FACT, kinds=("neuron",))
    with pytest.raises(ValueError, match="needs equal lengths"):
        activation_patching(tiny, FACT, corrupt=Fact("Tobin Farrow", "birthplace", "Karreth", "{} was born in"))
    with pytest.raises(ValueError, match="neuron_position 99 is outside"):
        activation_patching(tiny, FACT, ("neuron",), neuron_position=99)
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        TraceConfig(n_samples=0)


def test_hooks_removed_after_metric_raises(tiny):
    tokens = excise.tokenize_prompt(tiny, FACT).tokens[None]
    with torch.no_grad():
        before = tiny(tokens)

    def broken(logits):
        raise RuntimeError("metric exploded")

    with pytest.raises(RuntimeError, match="metric exploded"):
        activation_patching(tiny, FACT, ("mlp",), metric=broken)
    assert _no_hooks_left(tiny)
    with torch.no_grad():
        assert torch.equal(tiny(tokens), before)


def test_localization_top_peak_save_plot(tiny, tmp_path):
    trace = causal_trace(tiny, FACT, n_samples=2)
    top = trace.top(3, kind="mlp")
    assert [t.score for t in top] == sorted((t.score for t in top), reverse=True)
    assert top[0].component == trace.peak("mlp")
    assert top[0].component.kind == "mlp" and top[0].component.position is not None
    assert len(trace.to_components(5, kind="resid")) == 5
    with pytest.raises(ValueError, match="pass kind="):
        trace.top(3)
    path = tmp_path / "trace.json"
    trace.save(path)
    back = Localization.load(path)
    assert back.tokens == trace.tokens and torch.equal(back.scores["attn"], trace.scores["attn"])
    fig = trace.plot()
    ax = fig.axes[0]
    assert ax.get_xlabel() == "layer" and any("*" in t.get_text() for t in ax.get_yticklabels())
    assert "MLP output" in fig.axes[1].get_title() or "MLP output" in fig.axes[2].get_title()
    bars = fisher(tiny, FACT, config=FisherConfig(progress=False)).plot()
    assert "top" in bars.axes[0].get_title()


def test_localization_mean_over_facts(tiny):
    a = attribution_patching(tiny, FACT, kinds=("head", "neuron"))
    b = attribution_patching(tiny, FACT.__class__("Tolvanen Mira", "birthplace", "Veltrana", "{} was born in"),
                             kinds=("head", "neuron"))
    mean = Localization.mean([a, b])
    assert torch.allclose(mean.scores["head"], (a.scores["head"] + b.scores["head"]) / 2)
    assert mean.meta["mean_of"] == 2 and mean.axes["neuron"] == ("layer", "index")
    with pytest.raises(ValueError, match="per position"):
        Localization.mean([causal_trace(tiny, FACT, n_samples=2)])
    with pytest.raises(ValueError, match="at least one"):
        Localization.mean([])


def test_planted_fact_is_stated_then_undone(organism_model, world):
    """The rank-one planting helper: the model states the new fact inside the block,
    and the weights come back bit for bit on exit, also after an exception."""
    from excise.edit.rank_one import planted

    base = world[6]
    fact = Fact(base.subject, base.relation, world.alternatives(base)[0], base.prompt)
    W = excise.weights.linear(organism_model, 1, "mlp.out").weight.detach().clone()
    with planted(organism_model, fact, layer=1, position="last") as info:
        assert info["p_target"] >= 0.9
        assert excise.recall_table(organism_model, [fact], ("request",)).rate("request") == 1.0
    assert torch.equal(excise.weights.linear(organism_model, 1, "mlp.out").weight, W)
    with pytest.raises(RuntimeError, match="boom"):
        with planted(organism_model, fact, layer=1, position="last"):
            raise RuntimeError("boom")
    assert torch.equal(excise.weights.linear(organism_model, 1, "mlp.out").weight, W)
    with pytest.raises(ValueError, match="layer 9 is out of range"):
        with planted(organism_model, fact, layer=9):
            pass
    assert Component(1, "mlp").check(organism_model).hook_name == "blocks.1.hook_mlp_out"


@pytest.mark.parametrize("layer", [1, 2])
def test_causal_trace_finds_a_planted_layer(organism_model, world, layer):
    """A whitened rank-one write at MLP `layer` (ROME's update): the trace ranks that layer first."""
    from excise.edit.rank_one import key_second_moment, planted

    base = world[13]
    fact = Fact(base.subject, base.relation, world.alternatives(base)[0], base.prompt)
    others = [f for f in world if f.relation == base.relation and f.subject != base.subject][:150]
    C = key_second_moment(organism_model, layer, others, position="last")
    with planted(organism_model, fact, layer, position="last", C=C) as info:
        assert info["p_target"] >= 0.9
        # whitened: the write leaves the relation's other facts alone
        assert excise.recall_table(organism_model, others[:40], ("request",)).rate("request") >= 0.95
        trace = causal_trace(organism_model, fact, kinds=("mlp",))
        assert int(trace.layer_scores("mlp").argmax()) == layer


def test_rank_one_update_maps_key_to_value():
    from excise.edit.rank_one import rank_one_update

    gen = torch.Generator().manual_seed(0)
    W, k, v = torch.randn(6, 4, generator=gen), torch.randn(6, generator=gen), torch.randn(4, generator=gen)
    C = torch.randn(6, 6, generator=gen)
    C = C @ C.T + torch.eye(6)
    for C_inv in (None, torch.linalg.inv(C)):
        W_new = rank_one_update(W, k, v, C_inv)
        assert torch.allclose(W_new.T @ k, v, atol=1e-5)
        assert torch.linalg.matrix_rank(W_new - W) == 1
    with pytest.raises(ValueError, match="non-zero key"):
        rank_one_update(W, torch.zeros(6), v)
    with pytest.raises(Exception, match="d_in"):    # shapes in the signature are checked under pytest
        rank_one_update(W, torch.randn(5), v)


def test_trace_meta_is_typed_and_survives_saving(organism_model, tmp_path):
    from excise.locate import Localization, TraceMeta, causal_trace

    fact = list(excise.organism.world())[0]
    trace = causal_trace(organism_model, fact, kinds=("mlp",), n_samples=2)          # overrides of TraceConfig
    meta = TraceMeta.of(trace)
    assert meta.p_clean == trace.meta["p_clean"] > meta.p_corrupt and meta.config.n_samples == 2
    assert meta.noise_std == pytest.approx(meta.config.noise * meta.noise_sigma)
    trace.save(tmp_path / "t.json")
    assert TraceMeta.of(Localization.load(tmp_path / "t.json")) == meta
    with pytest.raises(ValueError, match="TraceMeta reads causal traces"):
        TraceMeta.of(Localization(method="fisher", scores=trace.scores, axes=trace.axes))
