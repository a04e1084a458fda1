"""One suite, two architectures: the same locate/edit/verify properties on the GPT-2
organism and on stories260k, a real pretrained Llama (RMSNorm, rotary positions,
grouped-query attention with 8 query / 4 key-value heads, SwiGLU MLP), shipped in
excise/zoo."""

from __future__ import annotations

import pytest
import torch

import excise
from excise import Component
from excise.components import kv_head
from excise.edit import EditRecord, MemitConfig, RomeConfig, ablate, memit, rome
from excise.edit.record import storage_owners
from excise.locate import FisherConfig, TraceConfig, activation_patching, attribution_patching, causal_trace, fisher
from excise.locate.causal_trace import trace_one_at_a_time
from excise.methods import unlearn
from excise.scoring import answer_examples, answer_logprobs, recall_table
from excise.verify import logit_lens
from excise.weights import linear

ARCHS = ["organism", "stories260k"]
ROME_LAYER = {"organism": 0, "stories260k": 1}     # organism: see bench edit; stories: bench stories, L1 erase


class Arch:
    """A loaded model with facts it recalls, another fact as neighbour, and a covariance sample."""

    def __init__(self, name: str):
        self.name = name
        self.model = excise.load(name, device="cpu")
        if name == "organism":
            world = excise.organism.world()
            self.facts = list(world.of_subject(world.people[2]))[:2] + list(world.of_subject(world.people[4]))[:1]
            from excise.organism.train import corpus
            self.sample = corpus(world)[::8]               # an eighth of the training text: C in seconds
        else:
            facts, _ = excise.stories.facts(self.model)
            self.facts = [facts.fact("little girl", "name"), facts.fact("Lily", "thanks"),
                          facts.fact("dog", "wags")]
            self.sample = excise.edit.generated_sample(self.model, n=32, length=32, seed=0)
        self.layer = ROME_LAYER[name]


@pytest.fixture(scope="module", params=ARCHS)
def arch(request, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("EXCISE_CACHE", str(tmp_path_factory.mktemp(f"cache_{request.param}")))
    yield Arch(request.param)
    mp.undo()


def weights(model):
    return {n: p.detach().clone() for n, p in storage_owners(model).items()}


def changed(before, model) -> set[str]:
    return {n for n, p in storage_owners(model).items() if not torch.equal(before[n], p)}


def test_the_model_recalls_its_facts(arch):
    assert recall_table(arch.model, arch.facts, ("request",)).rate("request") == 1.0


def test_batched_trace_equals_one_at_a_time(arch):
    from excise.locate.interventions import _can_resume

    # both paths of run_plans are checked against the loop: GPT-2's blocks resume from a residual, the
    # Llama's (rotary embeddings passed in by the model) run whole forwards
    assert _can_resume(arch.model) == (arch.name == "organism")
    cfg = TraceConfig(n_samples=2, batch_size=13)
    batched = causal_trace(arch.model, arch.facts[0], config=cfg)
    loop = trace_one_at_a_time(arch.model, arch.facts[0], config=cfg)
    for kind in ("resid", "mlp", "attn"):
        assert torch.allclose(batched.scores[kind], loop[kind], atol=1e-4), kind


def test_patching_clean_into_itself_is_zero_at_every_granularity(arch):
    f = arch.facts[0]
    loc = activation_patching(arch.model, f, ("resid", "mlp", "attn", "head", "neuron"), corrupt=f)
    assert loc.scores["head"].shape[-1] == arch.model.cfg.n_heads
    assert loc.scores["neuron"].shape[-1] == arch.model.cfg.d_mlp
    for kind, s in loc.scores.items():
        assert s.nan_to_num().abs().max() <= 1e-4, kind


def test_attribution_tracks_exact_neuron_patching(arch):
    """Neurons are the MLP hidden units (for SwiGLU: act(gate) * up, the input of down_proj)."""
    f = arch.facts[0]
    last_subject = excise.tokenize_prompt(arch.model, f).last_subject
    layer = arch.layer
    exact = activation_patching(arch.model, f, ("neuron",), layers=[layer], neuron_position=last_subject,
                                n_samples=3)
    approx = attribution_patching(arch.model, f, ("neuron",), neuron_position=last_subject, n_samples=3)
    e, a = exact.scores["neuron"][layer], approx.scores["neuron"][layer]
    corr = torch.corrcoef(torch.stack([e, a]))[0, 1]
    assert corr > 0.5, float(corr)


def test_head_scores_are_per_query_head_and_name_their_kv_head(arch):
    cfg = arch.model.cfg
    loc = attribution_patching(arch.model, arch.facts[0], ("head",), n_samples=2)
    assert loc.scores["head"].shape == (cfg.n_layers, cfg.n_heads)
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    assert loc.meta["n_key_value_heads"] == n_kv
    if arch.name == "stories260k":
        assert n_kv == 4 and loc.meta["kv_head_of_query_head"] == [0, 0, 1, 1, 2, 2, 3, 3]
        assert kv_head(cfg, 5) == 2


def test_one_ownership_map_forward_and_back(arch):
    """A component's mask (Component.weight_slices) is read back to that component by EditRecord.touched
    and Fisher's unit sums, on MHA and on grouped-query attention alike (stories260k: 8 heads, 4 kv)."""
    from excise.edit.masks import parameter_masks
    from excise.edit.record import storage_owners
    from excise.locate.fisher import component_scores

    model, cfg = arch.model, arch.model.cfg
    owners = {p.untyped_storage().data_ptr(): n for n, p in storage_owners(model).items()}
    for c in (Component(1, "neuron", 5), Component(1, "head", 3), Component(1, "mlp"), Component(1, "attn")):
        masks = parameter_masks(model, [c])
        F = {id(p): m.float() for p, m in masks}                           # one per owned entry
        scores = component_scores(model, F)
        with excise.edit.recording(model, "mark", scope=[p for p, _ in masks]) as box, torch.no_grad():
            for p, m in masks:
                p[m] += 1.0
        touched = box["record"].touched(model)
        box["record"].undo()
        assert all(owners[p.untyped_storage().data_ptr()] for p, _ in masks)
        if c.kind == "neuron":
            assert touched == [c] and scores["neuron"][1].nonzero().flatten().tolist() == [5]
        elif c.kind == "head":
            group = cfg.n_heads // (getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
            mates = [Component(1, "head", h) for h in range(cfg.n_heads) if h // group == 3 // group]
            assert touched == mates                                   # its kv head is shared by its group
            assert scores["head"][1].argmax() == 3 and scores["head"][1, [m.index for m in mates]].min() > 0
        else:
            unit, n = ("neuron", cfg.d_mlp) if c.kind == "mlp" else ("head", cfg.n_heads)
            assert [x for x in touched if x.kind == unit] == [Component(1, unit, i) for i in range(n)]
            assert set(touched) - {Component(1, unit, i) for i in range(n)} <= {c}      # and the output bias, if any
            assert scores[c.kind][1] == sum(float(m.sum()) for _, m in masks) and scores[c.kind][0] == 0


def test_fisher_shapes_and_untouched_layers(arch):
    loc = fisher(arch.model, forget=arch.facts[:1], retain=arch.facts[1:], config=FisherConfig(progress=False))
    cfg = arch.model.cfg
    assert loc.scores["neuron"].shape == (cfg.n_layers, cfg.d_mlp)
    assert loc.scores["head"].shape == (cfg.n_layers, cfg.n_heads)
    assert (loc.scores["neuron"] >= 0).all() and loc.scores["neuron"].max() > 0


def test_rome_delete_changes_one_matrix_and_undoes(arch, tmp_path):
    m, f = arch.model, arch.facts[0]
    before = weights(m)
    record = rome(m, f, RomeConfig(layer=arch.layer, objective="erase_unlikelihood"), sample=arch.sample)
    try:
        assert recall_table(m, [f], ("request",)).rate("request") == 0.0
        assert recall_table(m, arch.facts[1:], ("request",)).rate("request") == 1.0
        out = linear(m, arch.layer, "mlp.out").weight
        names = changed(before, m)
        assert names == {n for n, p in storage_owners(m).items() if p is out}
        assert {c.kind for c in record.touched()} == {"neuron"}
        edited = weights(m)
        record.save(tmp_path / "rome.safetensors")
    finally:
        record.undo()
    assert not changed(before, m)
    loaded = EditRecord.load(tmp_path / "rome.safetensors", m)
    loaded.apply()
    assert not changed(edited, m)
    loaded.undo()
    assert not changed(before, m)


def test_memit_spreads_over_its_layers_only(arch):
    m = arch.model
    layers = (arch.layer, arch.layer + 1)
    facts = arch.facts[1:]                        # two subjects
    examples = answer_examples(m, facts)
    logp = answer_logprobs(m, examples)
    before = weights(m)
    record = memit(m, facts, MemitConfig(layers=layers, mom2_weight=300.0, objective="erase_unlikelihood", progress=False), sample=arch.sample)
    try:
        outs = {id(linear(m, l, "mlp.out").weight) for l in layers}
        assert changed(before, m) and all(id(storage_owners(m)[n]) in outs for n in changed(before, m))
        assert (answer_logprobs(m, examples) - logp).mean() < -0.1    # efficacy itself: bench edit / stories
    finally:
        record.undo()
    assert not changed(before, m)


def test_baked_ablation_equals_the_hooked_ablation(arch):
    m = arch.model
    neuron, head = 5, 3
    comps = [Component(1, "neuron", neuron), Component(2, "head", head)]

    def zero_neuron(act, hook):
        act = act.clone()
        act[..., neuron] = 0
        return act

    def zero_head(act, hook):
        act = act.clone()
        act[:, :, head] = 0
        return act

    tokens = excise.tokenize_prompt(m, arch.facts[0]).tokens[None]
    with torch.no_grad(), m.hooks(fwd_hooks=[("blocks.1.mlp.hook_post", zero_neuron),
                                             ("blocks.2.attn.hook_z", zero_head)]):
        expected = m(tokens)
    before = weights(m)
    record = ablate(m, comps)
    try:
        with torch.no_grad():
            assert torch.allclose(m(tokens), expected, atol=1e-5)
        assert set(record.touched()) == set(comps)
    finally:
        record.undo()
    assert not changed(before, m)
    if arch.name == "stories260k":       # no output biases to hold a mean
        with pytest.raises(ValueError, match="mode='zero'"):
            ablate(m, comps, mode="mean", sample=["Lily went to the park."])
        assert not changed(before, m)


def test_masked_unlearning_moves_only_the_mask_and_undoes(arch):
    m = arch.model
    mask = [Component(arch.layer, "neuron", i) for i in range(8)] + [Component(2, "head", 1)]
    before = weights(m)
    record = unlearn(m, arch.facts[:1], arch.facts[1:], "npo", mask=mask, steps=4, eval_every=4, progress=False,
                     lr=1e-2)
    try:
        assert changed(before, m) <= set(record.parameters_touched())
        touched = set(record.touched())
        # a key/value head serves its whole group of query heads: changing it touches them all
        group = {Component(2, "head", h) for h in range(m.cfg.n_heads) if kv_head(m.cfg, h) == kv_head(m.cfg, 1)}
        assert touched and touched <= set(mask) | group
    finally:
        record.undo()
    assert not changed(before, m)


def test_logit_lens_last_layer_is_the_output_through_the_final_norm(arch):
    m = arch.model
    probes = logit_lens(m, arch.facts, top_k=3)
    assert all(p.ranks[-1] == 0 for p in probes)        # recalled: the output's top-1, read through ln_final
    assert all(len(p.ranks) == m.cfg.n_layers for p in probes)


def test_trace_delete_audit_end_to_end(arch):
    m, f = arch.model, arch.facts[0]
    trace = causal_trace(m, f, kinds=("mlp",), n_samples=3)
    assert trace.scores["mlp"].shape == (m.cfg.n_layers, len(trace.tokens))
    record = rome(m, f, RomeConfig(layer=arch.layer, objective="head_projection_unlikelihood"),
                  sample=arch.sample)
    try:
        report = excise.verify.audit(m, [f], retain=arch.facts[1:], progress=False)
        assert report.recall("edited", "request") == 0.0
        assert report.success("edited", "logit_lens", 1) is not None
        assert report.success("edited", "head_projection", 4) is not None     # Patil et al.'s attack, k = 4
        assert recall_table(m, arch.facts[1:], ("request",)).rate("request") >= 0.5
    finally:
        record.undo()


def test_discover_keeps_confident_whole_words_and_sentencepiece_spans():
    m = excise.load("stories260k")
    pt = excise.tokenize_prompt(m, excise.Fact("little girl", "name", "Lily", "Once upon a time, there was a {} named"))
    assert m.tokenizer.decode(pt.tokens[pt.subject[0]:pt.subject[1]]).strip() == "little girl"
    facts, rows = excise.facts.discover(m, [
        {"subject": "little girl", "relation": "name", "prompt": "Once upon a time, there was a {} named"},
        {"subject": "Sara", "relation": "feels", "prompt": "{} felt very"},
        {"subject": "Lucy", "relation": "hurt", "prompt": "{} fell down and hurt her"},
    ])
    assert [f.target for f in facts] == ["Lily"]
    assert rows[0]["prob"] > 0.9 and "dropped" not in rows[0]
    assert "probability" in rows[1]["dropped"]
    assert "tokenizes differently" in rows[2]["dropped"]       # "her" + "self": no word of its own
