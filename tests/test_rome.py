"""ROME: scope, undo, persistence, failure safety, the covariance cache, and deletion on the organism."""

from __future__ import annotations

import pytest
import torch

import excise
from excise import Fact
from excise.edit import EditRecord
from excise.edit.covariance import provenance, second_moment
from excise.edit.record import storage_owners
from excise.edit.rome import RomeConfig, rome
from excise.organism import corpus
from excise.weights import linear

TEXTS = ["Mira Tolvanen was born in Veltrana.", "The cat sat on the mat.",
         "Q: Where was Tobin Farrow born? A: Karreth"] * 3
FACT = Fact("Mira Tolvanen", "birthplace", "Veltrana", "{} was born in")
NEW = Fact("Mira Tolvanen", "birthplace", "Karreth", "{} was born in")




@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EXCISE_CACHE", str(tmp_path / "cache"))


def weights(model):
    return {n: p.detach().clone() for n, p in storage_owners(model).items()}


@pytest.mark.parametrize("through_edit", [False, True])
def test_rewrite_touches_only_its_matrix_and_undoes(tiny, tiny_dir, tmp_path, through_edit):
    before = weights(tiny)
    logp_before = excise.recall_table(tiny, [NEW], ("request",)).rows[0]["logprob"]
    record = rome(tiny, NEW, RomeConfig(layer=0, objective="rewrite", v_steps=30, clamp_norm=100.0,
                                          weight_decay=0.0, through_edit=through_edit), sample=TEXTS)
    after = weights(tiny)
    out_name = next(n for n, p in storage_owners(tiny).items()
                    if p.untyped_storage().data_ptr() == linear(tiny, 0, "mlp.out").weight.untyped_storage().data_ptr())
    assert list(record.parameters_touched()) == [out_name]
    assert all(torch.equal(before[n], after[n]) for n in before if n != out_name)
    assert torch.linalg.matrix_rank(after[out_name] - before[out_name]) == 1
    # a random model barely reads the subject position; the direction is what can be checked here
    assert excise.recall_table(tiny, [NEW], ("request",)).rows[0]["logprob"] > logp_before
    path = tmp_path / "rome.safetensors"
    record.save(path)
    record.undo()
    assert all(torch.equal(before[n], v) for n, v in weights(tiny).items())
    fresh = excise.load(tiny_dir, device="cpu")
    EditRecord.load(path, fresh).apply()
    assert all(torch.equal(after[n], v) for n, v in weights(fresh).items())


def test_failure_mid_edit_restores(tiny, monkeypatch):
    before = weights(tiny)
    import importlib

    rome_module = importlib.import_module("excise.edit.rome")   # excise.edit.rome is also the function

    def broken(*a, **k):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(rome_module, "rank_one_update", broken)
    with pytest.raises(RuntimeError, match="injected"):
        rome(tiny, NEW, RomeConfig(layer=0, objective="rewrite", v_steps=2), sample=TEXTS)
    assert all(torch.equal(before[n], v) for n, v in weights(tiny).items())


def test_deleting_a_fact_the_model_does_not_know_warns(tiny):
    with pytest.warns(UserWarning, match="not recalled by the model in the first place"):
        record = rome(tiny, FACT, RomeConfig(layer=0, objective="erase_unlikelihood", v_steps=2), sample=TEXTS)
    assert record.meta["recalled_before"] is False


def test_bad_input(tiny):
    with pytest.raises(ValueError, match="layer 4 is out of range: the model has 2 layers"):
        rome(tiny, FACT, RomeConfig(layer=4), sample=TEXTS)
    with pytest.raises(ValueError, match="is the last block"):
        rome(tiny, FACT, RomeConfig(layer=1), sample=TEXTS)
    with pytest.raises(ValueError, match="objective must be one of"):
        RomeConfig(layer=0, objective="forget_harder")
    with pytest.raises(ValueError, match="regularizer must be one of"):
        RomeConfig(layer=0, regularizer="l2")
    with pytest.raises(ValueError, match="margin_k must be >= 1"):
        RomeConfig(layer=0, objective="head_projection", margin_k=0)
    with pytest.raises(ValueError, match="lens_layers \\[3\\] are out of range"):
        rome(tiny, FACT, RomeConfig(layer=0, objective="head_projection", lens_layers=(1, 3), v_steps=1),
             sample=TEXTS)
    before = weights(tiny)
    with pytest.warns(UserWarning, match="no sample given for the key covariance; using 128 texts the model wrote"):
        record = rome(tiny, NEW, RomeConfig(layer=0, objective="rewrite", v_steps=2))
    assert record.touched()
    record.undo()
    assert all(torch.equal(before[n], v) for n, v in weights(tiny).items())


def test_covariance_is_cached_with_provenance(tiny, monkeypatch, tmp_path):
    C = second_moment(tiny, 1, TEXTS, cache_dir=tmp_path / "cov")
    # K^T K is symmetric up to float32 rounding of entries |C| <= ~1: a few eps32, far below 1e-6
    assert C.shape == (tiny.cfg.d_mlp, tiny.cfg.d_mlp) and torch.allclose(C, C.T, atol=1e-6)
    [path] = list((tmp_path / "cov").iterdir())
    info = provenance(path)
    assert info["layer"] == 1 and info["n_texts"] == len(TEXTS) and info["n_tokens"] > len(TEXTS)
    assert info["model_fingerprint"] == excise.fingerprint(tiny)
    import excise.edit.covariance as cov

    monkeypatch.setattr(cov, "estimate_second_moment", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    assert torch.equal(second_moment(tiny, 1, TEXTS, cache_dir=tmp_path / "cov"), C)


def test_reference_settings_and_ridge_zero_on_a_small_sample(tiny):
    """`RomeConfig.reference` is ROME's compute_v (KL on "{} is a", |delta| decay, no ridge); the tiny model's
    9 texts give fewer tokens than d_mlp, so ROME's unridged C^-1 is noise, and excise says so."""
    cfg = RomeConfig.reference(0, "head_projection", v_steps=3)
    assert (cfg.regularizer, cfg.ridge, cfg.kl_weight, cfg.weight_decay, cfg.lr, cfg.clamp, cfg.through_edit) == \
        ("rome", 0.0, 0.0625, 0.5, 0.5, 4.0, False)
    assert cfg.layers_read(2) == (1, 2) and cfg.margin_k == 4
    assert RomeConfig(layer=0, objective="head_projection_unlikelihood").layers_read(4) == (1, 2, 3)
    assert RomeConfig(layer=0, objective="empty").empty == "dummy"
    assert RomeConfig(layer=0, objective="empty_unlikelihood").empty == "nothing"
    before = weights(tiny)
    with pytest.warns(UserWarning, match="numerically singular"):
        record = rome(tiny, NEW, cfg, sample=TEXTS)
    assert record.meta["steps"] == 3                               # the reference objectives take every step
    record.undo()
    assert all(torch.equal(before[n], v) for n, v in weights(tiny).items())


def _lens(model, fact, layers):
    """Lens probabilities [layers, vocab] at the request prompt's last token (hidden-state indices)."""
    from transformer_lens.tools.analysis import logit_readout

    from excise.scoring import encode

    tokens = torch.tensor(encode(model, [fact.fill(fact.prompt)]))
    names = ["blocks.0.hook_resid_pre" if i == 0 else f"blocks.{i - 1}.hook_resid_post" for i in layers]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return logit_readout(model, torch.stack([cache[n][0, -1] for n in names]), return_type="probs").values


@pytest.mark.parametrize("objective", ["erase", "max_entropy", "empty", "head_projection"])
def test_reference_objectives_move_what_they_optimize(organism_model, world, objective):
    """Patil et al.'s objectives as their code computes them (golden numbers: test_patil_reference.py): each
    moves its own quantity on an organism fact, in the reference's 20 steps. Only some of them delete the
    fact on the organism (benchmarks/results/edit.md), so deletion is not what this checks."""
    from excise.edit.rome import lens_entropy, margin_loss

    fact = world[10]
    cfg = RomeConfig(layer=0, objective=objective, v_steps=20)
    layers = cfg.layers_read(organism_model.cfg.n_layers)
    tid = excise.tokenize_prompt(organism_model, fact).target_ids[0]
    dummy = Fact(fact.subject, fact.relation, cfg.empty, fact.prompt)

    def measure():
        if objective == "erase":
            return -excise.recall_table(organism_model, [fact], ("request",)).rows[0]["logprob"]
        if objective == "empty":
            return excise.recall_table(organism_model, [dummy], ("request",)).rows[0]["logprob"]
        lens = _lens(organism_model, fact, layers)[:, None]
        return float(lens_entropy(lens)) if objective == "max_entropy" else -sum(map(float, margin_loss(lens, tid, 4)))

    before = measure()
    record = rome(organism_model, fact, cfg, sample=corpus())
    try:
        assert record.meta["steps"] == 20
        assert measure() > before + 0.01 * abs(before) + 1e-3
    finally:
        record.undo()


@pytest.mark.parametrize("objective", ["erase_unlikelihood", "max_entropy_unlikelihood", "empty_unlikelihood",
                                       "head_projection_unlikelihood", "max_entropy"])
def test_deletion_removes_an_organism_fact_and_keeps_its_neighbours(organism_model, world, objective):
    fact = world[10]
    record = rome(organism_model, fact, RomeConfig(layer=0, objective=objective), sample=corpus())
    try:
        table = excise.recall_table(organism_model, [fact], ("request", "paraphrase"))
        assert table.rate("request") == 0.0 and table.rate("paraphrase") <= 1 / 3   # generalizes to most paraphrases
        kept = excise.recall_table(organism_model, list(fact.neighbors), ("request",)).rate("request")
        assert kept >= 0.8
        assert record.touched() and all(c.layer == 0 and c.kind == "neuron" for c in record.touched())
    finally:
        record.undo()
    assert excise.recall_table(organism_model, [fact], ("request",)).rate("request") == 1.0


def test_protect_keeps_the_facts_whose_keys_the_write_moves_most(organism_model, world):
    """On the organism the closest keys at the last subject token are the people with the same surname."""
    fact = world[10]
    surname = fact.subject.split()[-1]
    record = rome(organism_model, fact, RomeConfig(layer=0, objective="erase_unlikelihood", protect=6),
                  sample=corpus(), protect_from=list(world))
    try:
        protected = record.meta["protected"]
        assert len(protected) == 6 and not any(p.startswith(fact.subject + " /") for p in protected)
        assert sum(p.split(" /")[0].split()[-1] == surname for p in protected) >= 4
        assert excise.recall_table(organism_model, [fact], ("request",)).rate("request") == 0.0
    finally:
        record.undo()


def test_protect_needs_facts_to_choose_from_off_the_organism(tiny):
    before = weights(tiny)
    with pytest.raises(ValueError, match="protect=3 needs the facts to choose from"):
        rome(tiny, FACT, RomeConfig(layer=0, objective="erase_unlikelihood", protect=3, v_steps=2), sample=TEXTS)
    assert all(torch.equal(before[n], v) for n, v in weights(tiny).items())


def test_memit_scope_undo_and_null_space(organism_model, world):
    from excise.edit.memit import MemitConfig, _token_keys, memit

    facts = list(world.sample(4, seed=5))
    preserve = list(world.filter(lambda f: f.subject not in {g.subject for g in facts}).sample(60, seed=6))
    before = weights(organism_model)
    cfg = MemitConfig(layers=(0, 1), null_space=True, objective="erase_unlikelihood", v=RomeConfig(layer=1, v_steps=5), progress=False)
    K0_before = _token_keys(organism_model, preserve, 0)
    out0 = linear(organism_model, 0, "mlp.out").W.detach().clone()
    record = memit(organism_model, facts, cfg, preserve=preserve, sample=corpus())
    try:
        changed = {n for n, v in weights(organism_model).items() if not torch.equal(before[n], v)}
        assert changed and all("mlp" in n and "c_proj" in n for n in changed)
        assert {c.layer for c in record.touched()} <= {0, 1}
        # the layer-0 update lives in the preserved keys' null space: their outputs barely move
        delta = linear(organism_model, 0, "mlp.out").W - out0
        moved = (K0_before.T @ delta).norm() / (K0_before.T @ out0).norm()
        assert moved < 0.05
    finally:
        record.undo()
    assert all(torch.equal(before[n], v) for n, v in weights(organism_model).items())


def test_memit_bad_input(organism_model, world):
    from excise.edit.memit import MemitConfig, memit

    with pytest.raises(ValueError, match="increasing range"):
        MemitConfig(layers=(2, 1))
    with pytest.raises(ValueError, match="ends at the last block"):
        memit(organism_model, world[:2], MemitConfig(layers=(2, 3)))
    with pytest.raises(ValueError, match="layer 9 is out of range"):
        memit(organism_model, world[:2], MemitConfig(layers=(1, 9)))
    with pytest.raises(ValueError, match="at least one fact"):
        memit(organism_model, [], MemitConfig(layers=(0,)))


def test_sequence_applies_in_order_and_undoes_all(organism_model, world):
    from excise.edit import sequence

    facts = list(world.sample(3, seed=9))
    before = weights(organism_model)
    seen = []

    def measure(i, record):
        seen.append(i)
        return {"recall_of_this_fact": excise.recall_table(organism_model, [facts[i]], ("request",)).rate("request")}

    seq = sequence(organism_model, facts, lambda m, f: rome(m, f, RomeConfig(layer=0, objective="erase_unlikelihood"), sample=corpus()), after_each=measure,
                   progress=False)
    assert len(seq) == 3 and seen == [0, 1, 2]
    assert [m["after"] for m in seq.measurements] == [1, 2, 3]
    assert [m["recall_of_this_fact"] for m in seq.measurements] == [0.0, 0.0, 0.0]   # each deleted as it came
    seq.undo()
    assert all(torch.equal(before[n], v) for n, v in weights(organism_model).items())

    def flaky(model, fact):
        if fact is facts[1]:
            raise RuntimeError("request rejected")
        return rome(model, fact, RomeConfig(layer=0, objective="erase_unlikelihood"), sample=corpus())

    with pytest.raises(RuntimeError, match="request rejected") as info:
        sequence(organism_model, facts, flaky, progress=False)
    assert len(info.value.sequence) == 1
    info.value.sequence.undo()
    assert all(torch.equal(before[n], v) for n, v in weights(organism_model).items())


def test_prompt_last_keys_are_the_mlp_input_at_the_prompts_end(tiny):
    """position="prompt_last": the key is the MLP input at the prompt's last token, averaged over the families'
    templates; the last block can be edited there (its output at the last token is the prediction's input)."""
    from excise.edit.rome import compute_k
    from excise.facts import tokenize_prompt

    fact = Fact("Mira Tolvanen", "birthplace", "Veltrana", "{} was born in", paraphrases=("{} comes from",))
    store = []
    for template in (fact.prompt, "{} comes from"):
        pt = tokenize_prompt(tiny, fact, template)
        _, cache = tiny.run_with_cache(pt.tokens[None])
        store.append(cache["blocks.0.mlp.hook_post"][0, -1])
    assert torch.allclose(compute_k(tiny, fact, 0, 0, "prompt_last"), store[0], atol=1e-5)
    assert torch.allclose(compute_k(tiny, fact, 0, 0, "prompt_last", ("request", "paraphrase")),
                          (store[0] + store[1]) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="position must be one of"):
        RomeConfig(layer=0, position="subject_first")
    assert RomeConfig(layer=0, position="prompt_last").key_families == ("request", "paraphrase")
    assert RomeConfig(layer=0, position="prompt_last").clamp == 10.0 and RomeConfig(layer=0).clamp == 4.0
    before = weights(tiny)
    record = rome(tiny, NEW, RomeConfig(layer=1, objective="rewrite", position="prompt_last", v_steps=3),
                  sample=TEXTS)                                                  # the last block
    assert [n for n in record.parameters_touched()] and all("blocks.1" in n or ".1." in n
                                                            for n in record.parameters_touched())
    record.undo()
    assert all(torch.equal(before[n], v) for n, v in weights(tiny).items())


def test_edit_site_on_the_organism_picks_the_prompts_end_late(organism_model, world):
    """The organism's MLPs restore more at the prompt's end (layer 3) than at the last subject token, where
    deletions measured as good or better (benchmarks/results/sites.md: paraphrase forget 1.00 vs 0.88)."""
    from excise.locate import edit_site

    site = edit_site(organism_model, list(world.sample(8, seed=0)))
    assert (site.layer, site.position) == (3, "prompt_last")
    assert site.shares["prompt_last"] > site.shares["subject_last"] and site.roles["subject_last"][3] is None


def test_the_layers_a_trace_supports_are_the_traced_layer_and_its_strong_neighbours():
    """MEMIT's range from a trace: contiguous around the traced layer, each neighbour restoring at least `fraction`
    of the traced layer's share; layers not traced (None) end it."""
    from excise.locate.site import EditSite

    site = EditSite(layer=3, scores=[None, 0.30, 0.50, 0.60, 0.42, 0.35], peaks=[3], p_clean=0.70, p_corrupt=0.20,
                    restored=0.8, seconds=0.0, reason="test", position="prompt_last")
    assert [round(site.share(layer), 2) for layer in (1, 2, 3, 4, 5)] == [0.2, 0.6, 0.8, 0.44, 0.3]
    assert site.supported(0.5) == (2, 3, 4)        # 0.6 and 0.44 >= 0.4; 0.2 and 0.3 below
    assert site.supported(0.2) == (1, 2, 3, 4, 5)
    assert site.supported(1.0) == (3,)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        site.supported(0)
