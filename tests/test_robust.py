"""Robust deletion (issue 22): RMU, SimNPO and the relearning curve on the organism.

Properties: SimNPO's loss is open-unlearning's formula (golden numbers); RMU and SimNPO forget a
subject's facts and keep most others; undo restores every weight bit for bit; an exception inside
RMU leaves the weights untouched; relearn_curve at 0 steps is the plain recall, at n steps it is
`relearn`'s, and it never changes the model it measures.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

import excise
from excise import Component
from excise.edit.record import storage_owners
from excise.edit.rmu import RmuConfig, control_vector, rmu, rmu_loss
from excise.methods import get, unlearn
from excise.methods.simnpo import simnpo_loss
from excise.scoring import answer_examples
from excise.verify.relearn import RelearnConfig, relearn, relearn_curve
from excise.weights import copy_model


def weights(model):
    return {n: p.detach().clone() for n, p in storage_owners(model).items()}


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def request_recall(model, facts) -> float:
    return excise.recall_table(model, facts, ("request",)).rate("request")


# -- SimNPO ---------------------------------------------------------------------------------------------

def test_simnpo_defaults_are_open_unlearnings():
    cfg = get("simnpo").configure()
    assert (cfg.beta, cfg.margin, cfg.forget_weight, cfg.retain_weight) == (4.5, 0.0, 0.125, 1.0)
    assert get("npo").configure().forget_weight == 1.0


def test_simnpo_loss_golden():
    """-(2/beta) mean log sigmoid(beta (NLL/|y| - margin)), computed with the math module."""
    logp, lengths, beta, margin = [-0.5, -6.0, -1.2], [1, 3, 2], 4.5, 0.3
    expect = sum(-(2 / beta) * math.log(1 / (1 + math.exp(-beta * (-lp / n - margin))))
                 for lp, n in zip(logp, lengths, strict=True)) / 3
    got = simnpo_loss(torch.tensor(logp), torch.tensor(lengths), beta, margin)
    assert abs(float(got) - expect) < 1e-6, (float(got), expect)


def test_simnpo_forget_loss_on_a_hand_made_batch(organism_model, world):
    """Through the model: each answer's NLL from its own unpadded forward, length-normalized by hand."""
    facts = [world.of_subject(world.people[2])[0], world.of_subject(world.people[4])[3]]
    batch = answer_examples(organism_model, facts, ("request", "paraphrase"))
    assert len({len(e.ids) for e in batch}) > 1                 # rows of several lengths: padding is exercised
    simnpo = get("simnpo")
    cfg = simnpo.configure(margin=0.2)
    expect = 0.0
    with torch.no_grad():
        for e in batch:
            logits = organism_model(torch.tensor([e.ids]))[0].double().log_softmax(-1)
            nll = -sum(float(logits[e.start - 1 + i, t]) for i, t in enumerate(e.answer))
            z = cfg.beta * (nll / len(e.answer) - cfg.margin)
            expect += (2 / cfg.beta) * math.log1p(math.exp(-z)) / len(batch)     # -(2/beta) log sigmoid(z)
        got = simnpo.forget_loss(organism_model, batch, list(range(len(batch))), torch.zeros(len(batch)), None, cfg)
    assert abs(float(got) - expect) < 1e-4 * max(1.0, abs(expect)), (float(got), expect)


def test_simnpo_forgets_keeps_undoes_and_relearn_curve_reads_it(organism_model, world):
    forget = list(world.of_subject(world.people[5]))
    retain = world.retain_set(forget, n=100, seed=0)
    check = world.retain_set(forget, n=200, seed=1)
    before = weights(organism_model)
    record = unlearn(organism_model, forget, retain, "simnpo", progress=False)
    try:
        forgotten, kept = request_recall(organism_model, forget), request_recall(organism_model, check)
        assert forgotten <= 1 / 6 and kept >= 0.9, (forgotten, kept)
        edited = weights(organism_model)
        curve = relearn_curve(organism_model, forget, steps=(0, 3))
        assert curve.at(0) == forgotten                      # step 0 is the plain recall
        assert same(edited, weights(organism_model))         # a copy was fine-tuned, not the model
        assert curve.n_probes == len(forget) and len(curve.recall) == 2
    finally:
        record.undo()
    assert same(before, weights(organism_model))


# -- RMU ------------------------------------------------------------------------------------------------

def test_rmu_maths():
    c = control_vector(16, 3.0, seed=1)
    assert torch.equal(c, control_vector(16, 3.0, seed=1)) and not torch.equal(c, control_vector(16, 3.0, seed=2))
    assert abs(float(c.norm()) - 3.0) < 1e-5 and (c >= 0).all()     # WMDP's torch.rand: the positive orthant
    h = torch.randn(5, 16)
    total, forget, retain = rmu_loss(c.expand(4, 16), c, h, h, alpha=100.0)
    assert float(total) == float(forget) == float(retain) == 0.0
    total, forget, retain = rmu_loss(torch.zeros(2, 16), c, h + 1, h, alpha=2.0)
    assert torch.isclose(forget, c.pow(2).mean()) and torch.isclose(retain, torch.tensor(1.0))
    assert torch.isclose(total, forget + 2.0)


def test_rmu_forgets_keeps_and_undoes(organism_model, world):
    forget = list(world.of_subject(world.people[7]))
    retain = world.retain_set(forget, n=100, seed=0)
    check = world.retain_set(forget, n=200, seed=1)
    before = weights(organism_model)
    record = rmu(organism_model, forget, retain, config=RmuConfig(progress=False))
    try:
        forgotten, kept = request_recall(organism_model, forget), request_recall(organism_model, check)
        assert forgotten <= 1 / 6 and kept >= 0.9, (forgotten, kept)
        assert record.meta["layer"] == 1 and record.meta["steering_coeff"] == pytest.approx(
            5.0 * record.meta["forget_norm"])
        # WMDP's parameters: the MLP output matrices of the steered layer and those below it, nothing else
        assert all("mlp" in n and "c_proj" in n and n.endswith("weight") for n in record.parameters_touched())
        assert {c.layer for c in record.touched()} <= {0, 1}
    finally:
        record.undo()
    assert same(before, weights(organism_model))


def test_rmu_moves_only_the_mask_and_restores_on_error(organism_model, world, monkeypatch):
    import importlib

    rmu_module = importlib.import_module("excise.edit.rmu")     # excise.edit.rmu is the function

    forget = list(world.of_subject(world.people[7]))[:2]
    retain = world.retain_set(forget, n=20, seed=0)
    mask = [Component(0, "neuron", i) for i in range(8)] + [Component(1, "head", 2)]
    before = weights(organism_model)
    record = rmu(organism_model, forget, retain, mask=mask, config=RmuConfig(steps=3, progress=False))
    try:
        assert record.meta["layer"] == 1                      # the deepest masked layer
        assert record.touched() and set(record.touched()) <= set(mask)
    finally:
        record.undo()
    assert same(before, weights(organism_model))

    def boom(*args, **kwargs):
        raise RuntimeError("injected after the first step")

    monkeypatch.setattr(rmu_module, "recall_table", boom)
    with pytest.raises(RuntimeError, match="injected"):
        rmu(organism_model, forget, retain, config=RmuConfig(steps=3, eval_every=1, progress=False))
    assert same(before, weights(organism_model))


# -- the relearning curve -------------------------------------------------------------------------------

def test_relearn_curve_matches_relearn_and_leaves_the_model(organism_model, world, tmp_path):
    forget = list(world.of_subject(world.people[11]))
    before = weights(organism_model)
    cfg = RelearnConfig(steps=4)
    curve = relearn_curve(organism_model, forget, steps=(4, 0), config=cfg)
    assert curve.steps == (0, 4)
    assert curve.at(0) == request_recall(organism_model, forget)
    assert curve.at(4) == relearn(organism_model, forget, cfg).recall      # the same attack, measured on the way
    assert same(before, weights(organism_model))

    unrelated = list(world.of_subject(world.people[12]))
    other = relearn_curve(organism_model, forget, steps=(0, 2), on="unrelated", unrelated=unrelated,
                          oracle=organism_model)
    assert other.n_probes == len(forget) and other.oracle_recall == other.recall   # the same model as its own oracle
    assert same(before, weights(organism_model))
    other.save(tmp_path / "curve.json")
    assert json.loads(other.to_json())["recall"] == list(other.recall)
    back = type(other).load(tmp_path / "curve.json")
    assert back.recall == other.recall and back.oracle_recall == other.oracle_recall and back.config == other.config
    assert other.plot().axes and "RelearnCurve(on=unrelated" in repr(other) and "oracle" in other.summary()
    with pytest.raises(ValueError, match="unrelated="):
        relearn_curve(organism_model, forget, on="unrelated")
    with pytest.raises(ValueError, match="shares"):
        relearn_curve(organism_model, forget, on="unrelated", unrelated=forget[:1])


# -- bench robust: which components each scope masks -----------------------------------------------------

def test_robust_scopes_pick_the_traced_layers_and_say_so():
    from excise.bench.robust import scope_components, summary, to_markdown, traced_layers

    curves = {"subject": [0.30, 0.10, 0.05, 0.02], "last": [0.01, 0.02, 0.40, 0.20]}
    fisher_neurons = [Component(1, "neuron", 7)]
    assert scope_components("fact_lookup", curves, 4, 1, 0, fisher_neurons) == [Component(0, "mlp")]
    assert scope_components("output", curves, 4, 2, 0, fisher_neurons) == [Component(2, "mlp"), Component(3, "mlp")]
    assert scope_components("fisher", curves, 4, 1, 0, fisher_neurons) == fisher_neurons
    assert scope_components("all", curves, 4, 1, 0, fisher_neurons) is None
    drawn = scope_components("random", curves, 4, 1, 3, fisher_neurons)
    assert drawn == scope_components("random", curves, 4, 1, 3, fisher_neurons)
    assert drawn[0].layer in (1, 3)                          # neither trace's layer (0: subject, 2: last)
    assert len(set(scope_components("random", curves, 4, 2, 3, fisher_neurons))) == 2   # too few left: any
    with pytest.raises(ValueError, match="scope must be one of"):
        scope_components("everywhere", curves, 4, 1, 0, fisher_neurons)

    row = lambda method, scope, other, unrel: {"method": method, "scope": scope, "components": None,  # noqa: E731
                                                "parameters_touched": 10, "seconds": 1.0, "efficacy": 1.0,
                                                "utility": 0.99, "relearned": {"other_half": other,
                                                                               "unrelated": unrel}}
    r = {"fraction": 0.05, "seed": 0, "forget_facts": 90, "forget_people": 15, "n_layers_masked": 1,
         "steps": [0, 10, 30, 100], "traced": curves, "fisher_neurons": 1, "unrelated_facts": 45,
         "relearn_config": {"lr": 1e-3}, "total_seconds": 1.0,
         "rows": [row("oracle", "retrain", [0, 0, 0.01, 0.02], [0, 0, 0, 0.01]),
                  row("npo", "fact_lookup", [0, 0.1, 0.2, 0.3], [0, 0, 0.1, 0.2]),
                  row("npo", "output", [0, 0.3, 0.5, 0.6], [0, 0.2, 0.3, 0.4])]}
    text = summary(r)
    assert "The oracle relearns 0.01/0.02 (other half, 30/100 steps)" in text and "least: fact_lookup" in text
    assert "| npo | output |" in to_markdown(r)

    undone = {**row("undo", "all", [0, 0.1, 0.1, 0.1], [0, 0, 0, 0]), "undo_alpha": 0.3, "undo_steps": 150}
    assert "swap at the scope, then UNDO (alpha 0.3, recall stop; all 150 steps)" in to_markdown({**r, "rows": r["rows"] + [undone]})

    model = excise.load("organism")
    facts = list(excise.organism.world().of_subject(excise.organism.world().people[0]))[:2]
    traced = traced_layers(model, facts)
    assert set(traced) == {"subject", "last"} and len(traced["subject"]) == model.cfg.n_layers


def test_robust_rerun_of_some_methods_keeps_the_others():
    from excise.bench.robust import merged

    def row(method, scope):
        return {"method": method, "scope": scope}

    settings = {"fraction": 0.05, "seed": 0, "n_layers_masked": 1, "steps": [0, 10, 30, 100], "forget_facts": 90,
                "total_seconds": 10.0}
    old = {**settings, "rows": [row("oracle", "retrain"), row("original", "-"), row("graddiff", "all"),
                                row("npo", "all"), row("undo", "all")]}
    new = {**settings, "total_seconds": 5.0, "rows": [row("oracle", "retrain"), row("original", "-"),
                                                      row("npo", "fisher")]}
    got = merged(new, old, ["npo"], ["fisher"])          # npo re-run at one scope: its other scope stays
    assert [(x["method"], x["scope"]) for x in got["rows"]] == [
        ("oracle", "retrain"), ("original", "-"), ("graddiff", "all"), ("npo", "fisher"), ("npo", "all"),
        ("undo", "all")]
    assert got["total_seconds"] == 15.0
    again = merged({**new, "rows": new["rows"][:2] + [row("npo", "all")]}, old, ["npo"], ["all"])
    assert [(x["method"], x["scope"]) for x in again["rows"]] == [
        ("oracle", "retrain"), ("original", "-"), ("graddiff", "all"), ("npo", "all"), ("undo", "all")]
    assert merged({**new, "seed": 1}, old, ["npo"])["rows"] == new["rows"]   # other settings
    assert merged(new, old, ["graddiff", "npo", "swap", "undo"]) is new             # a whole run


# -- UNDO ---------------------------------------------------------------------------------------------------

def test_undo_noise_is_the_references_shrink_and_perturb(tiny):
    """Matrices: (1 - a) W + a b Xavier-uniform; vectors: (1 - a) w; seeded."""
    from excise.edit.undo import shrink_and_perturb

    before = weights(tiny)
    touched = shrink_and_perturb(tiny, alpha=0.5, beta=0.1, seed=3)
    after = weights(tiny)
    assert touched == sum(p.numel() for p in before.values())
    for name, w in before.items():
        if w.dim() == 1:
            assert torch.allclose(after[name], 0.5 * w)
        else:
            noise = (after[name] - 0.5 * w) / 0.05                      # = the Xavier draw
            bound = math.sqrt(6.0 / sum(w.shape))
            assert noise.abs().max() <= bound * (1 + 1e-5) and noise.std() > 0.4 * bound
    again = copy_model_of(tiny, before)
    shrink_and_perturb(again, alpha=0.5, beta=0.1, seed=3)
    assert same(weights(again), after)


def test_undo_noise_restricted_to_the_mlps_or_a_mask_leaves_the_rest(tiny):
    """noise='mlp' / 'mask' (excise's variant): the MLP weights (or the masked neurons' entries) change,
    every other weight stays bitwise."""
    from excise.components import Component
    from excise.edit.undo import UndoConfig, _noise_masks, shrink_and_perturb

    before = weights(tiny)
    masks = _noise_masks(tiny, "mlp", None)
    touched = shrink_and_perturb(tiny, alpha=0.5, beta=0.1, seed=3, masks=masks)
    changed = {n: int((w != before[n]).sum()) for n, w in weights(tiny).items() if not torch.equal(w, before[n])}
    mlp = {n for n in before if ".mlp." in n}
    # every MLP matrix (its biases too, which are zero in this untrained model); attention, norms, embeddings not
    assert {n for n in mlp if before[n].dim() == 2} <= set(changed) <= mlp
    assert touched == sum(before[n].numel() for n in mlp)
    neurons = [Component(0, "neuron", 1), Component(1, "neuron", 2)]
    again = copy_model_of(tiny, before)
    touched = shrink_and_perturb(again, alpha=0.5, beta=0.1, seed=3, masks=_noise_masks(again, "mask", neurons))
    changed = {n: int((w != before[n]).sum()) for n, w in weights(again).items() if not torch.equal(w, before[n])}
    d_model = tiny.cfg.d_model
    assert touched == 2 * (2 * d_model + 1)           # per neuron: its W_in column, W_out row, b_in entry
    assert set(changed) <= mlp and 0 < sum(changed.values()) <= touched
    assert all(".h.0." in n or ".h.1." in n or "blocks.0." in n or "blocks.1." in n for n in changed)
    with pytest.raises(ValueError, match="noise_mask"):
        _noise_masks(again, "mask", None)
    with pytest.raises(ValueError, match="noise must be one of all, mlp, mask"):
        UndoConfig(noise="attn")


def test_undo_can_leave_the_forget_texts_out_of_the_distillation(tiny):
    from excise.edit.undo import UndoConfig, undo

    texts = [f"the cat number {i} sat on the mat" for i in range(40)]
    config = UndoConfig(alpha=0.3, max_steps=2, eval_every=1, batch_size=8, forget_texts="drop", progress=False)
    record = undo(tiny, texts, ["the dog sat on the mat"], config, forget_subjects=["number 3"])
    assert record.meta["dropped_texts"] == 11                   # number 3 and number 30-39
    record.undo()
    with pytest.raises(ValueError, match="leaves none"):
        undo(tiny, texts, ["the dog"], config, forget_subjects=["the cat"])
    with pytest.raises(ValueError, match="pass forget_subjects"):
        undo(tiny, texts, ["the dog"], config)
    with pytest.raises(ValueError, match="forget_texts must be"):
        UndoConfig(forget_texts="student")


def test_undo_teaches_forget_texts_a_strangers_outputs(tiny):
    """forget_texts="stranger": on a text naming a forget subject, the target outside the name is the teacher's
    on the text with a stand-in (prefix position for position, suffix shifted by the names' length difference),
    the positions inside the name leave the loss, and other texts keep their targets."""
    from excise.edit.undo import UndoConfig, _batch, _Lens, _teach_strangers, undo

    batch = ["the cat Zork Blimpfen sat on the mat", "the dog sat on the mat"]
    lens = _Lens.of(0.0, batch, ["Zork Blimpfen"], ["Al"], tiny)
    tokens, real = _batch(tiny, batch)
    mine, stand_in = (tiny.tokenizer.encode(t) for t in (batch[0], lens.swaps[batch[0]]))
    a, b = len(mine), len(stand_in)
    head = next(i for i, (x, y) in enumerate(zip(mine, stand_in)) if x != y)
    tail = next(i for i, (x, y) in enumerate(zip(mine[::-1], stand_in[::-1])) if x != y)
    assert lens.swaps[batch[0]] == "the cat Al sat on the mat" and a - tail - head > b - tail - head > 0
    with torch.no_grad():
        target = tiny(tokens)
        before = target.clone()
        theirs = tiny(_batch(tiny, [lens.swaps[batch[0]]])[0])
    taught = _teach_strangers(tiny, batch, tokens, real, target, lens)
    left_out = [p for p in range(a - 1) if not taught[0, p]]
    # exactly the positions that predict the forget name's second to last token
    assert left_out == list(range(head, a - tail - 1))
    assert torch.equal(taught[1], real[1]) and torch.equal(target[1], before[1])
    kept = [p for p in range(a - 1) if taught[0, p]]
    assert len(kept) == head + tail
    shift = [p if p < head else p - (a - b) for p in kept]
    # exact on any CPU: both sides come from the same one-row forward of the same stand-in text on this machine
    # (same shapes, same kernels, same threads); the function copies those logits, it computes nothing from them
    torch.testing.assert_close(target[0, kept], theirs[0, shift], rtol=0, atol=0)
    config = UndoConfig(alpha=0.3, max_steps=2, eval_every=1, batch_size=2, retain_threshold=-1.0,
                        forget_texts="stranger", progress=False)
    with pytest.raises(ValueError, match="stand_ins"):
        undo(tiny, batch, ["the dog"], config, forget_subjects=["Zork Blimpfen"])
    after = {}
    for mode in ("stranger", "teacher"):
        record = undo(tiny, batch, ["the dog"], replace(config, forget_texts=mode), forget_subjects=["Zork Blimpfen"],
                      stand_ins=["Al"])
        assert record.meta["steps"] == 2
        after[mode] = record.after_hash
        record.undo()
    assert after["stranger"] != after["teacher"]                    # the same seed, other targets


def copy_model_of(model, state):
    from excise.weights import copy_model

    twin = copy_model(model)
    for name, p in storage_owners(twin).items():
        p.data.copy_(state[name])
    return twin


def test_undo_distills_back_stops_at_the_threshold_and_undoes(tiny):
    from excise.edit.undo import UndoConfig, undo
    from excise.scoring import general_loss

    before = weights(tiny)
    texts = [f"the cat number {i} sat on the mat and looked at the dog" for i in range(40)]
    held = ["the dog sat on the mat", "a cat looked at the dog number 3"]
    record = undo(tiny, texts, held, UndoConfig(alpha=0.3, max_steps=40, eval_every=10, batch_size=8,
                                                progress=False))
    meta = record.meta
    assert meta["steps"] in (10, 20, 30, 40) and len(meta["history"]) == meta["steps"] // 10
    last = meta["history"][-1]["eval_loss"]
    assert last == pytest.approx(general_loss(tiny, held), rel=1e-5)
    assert meta["steps"] == 40 or last <= 1.05 * meta["teacher_eval_loss"]     # stopped by the threshold, or ran out
    assert last < meta["noised_eval_loss"]                                        # the distillation pulls it back
    assert record.n_changed > 0.9 * sum(p.numel() for p in before.values())
    record.undo()
    assert same(before, weights(tiny))
    with pytest.raises(ValueError, match="alpha and beta"):
        UndoConfig(alpha=1.5)


def test_undo_recall_stop_reads_the_eval_facts(tiny, monkeypatch):
    """stop='recall' (excise's variant): the first eval point whose top-1 recall of eval_facts reaches
    (1 - threshold) x the teacher's ends the distillation; without facts it is refused."""
    import importlib

    from excise.facts import Fact

    U = importlib.import_module("excise.edit.undo")        # excise.edit.undo the attribute is the function

    texts = [f"the cat number {i} sat on the mat and looked at the dog" for i in range(40)]
    facts = [Fact("the cat", "sat", "on", "{} sat"), Fact("the dog", "sat", "on", "{} sat")]
    script = iter([[True, True], [False, False], [True, False], [True, True], [True, True]])   # teacher, then evals
    monkeypatch.setattr(U, "recalled", lambda model, fs: next(script))
    config = U.UndoConfig(alpha=0.3, max_steps=40, eval_every=10, batch_size=8, stop="recall", retain_threshold=0.4,
                          progress=False)
    record = U.undo(tiny, texts, texts[:2], config, eval_facts=facts)
    assert record.meta["teacher_eval_recall"] == 1.0
    assert [h["eval_recall"] for h in record.meta["history"]] == [0.0, 0.5, 1.0]    # 0.5 < 0.6 <= 1.0
    assert record.meta["steps"] == 30
    record.undo()
    with pytest.raises(ValueError, match="eval_facts"):
        U.undo(tiny, texts, texts[:2], config)
    with pytest.raises(ValueError, match="stop must be"):
        U.UndoConfig(stop="kl")


def test_undo_original_teacher_teaches_the_texts_that_name_no_forget_subject(tiny, monkeypatch):
    """outside_teacher="original" (excise's variant): a text naming a forget subject is distilled from the
    unlearned model, every other text from the original; the stop reads the original's recall."""
    import importlib

    U = importlib.import_module("excise.edit.undo")
    teacher, original = copy_model(tiny), copy_model(tiny)
    with torch.no_grad():
        for p in original.parameters():
            p.add_(0.05)
    batch = ["Ann Lee sat on the mat", "the dog sat on the mat", "a cat saw Ann Lee"]
    seen = {}

    def kl(target, student, real):
        seen["target"] = target
        return (student * 0).sum()
    monkeypatch.setattr(U, "_forward_kl", kl)
    params = list(tiny.parameters())
    U._distill_step(tiny, teacher, batch, torch.optim.AdamW(params), params, 1e-3, 1.0, original, ["Ann Lee"])
    tokens, _ = U._batch(tiny, batch)
    with torch.no_grad():
        want = teacher(tokens)
        want[1] = original(tokens[1:2])[0]
    assert torch.equal(seen["target"], want)                     # rows 0 and 2 the unlearned's, row 1 the original's
    with pytest.raises(ValueError, match="forget_subjects"):
        U.undo(tiny, batch, batch, U.UndoConfig(progress=False), original=original)
    from excise.methods.undo import UndoMethodConfig
    with pytest.raises(ValueError, match="outside_teacher"):
        UndoMethodConfig(outside_teacher="oracle")


def test_undo_lens_term_reads_the_stand_in_texts_lens_after_the_names(tiny):
    """lens_weight (excise's variant): texts naming a forget subject are paired with their stand-in version;
    the KL is over the intermediate layers at the common suffix's positions: 0 for a student equal to the
    teacher on an unchanged text, positive with a gradient once they differ."""
    import importlib

    from excise.components import forward_keeping

    U = importlib.import_module("excise.edit.undo")

    def intermediate(model, tokens):
        kept = forward_keeping(model, tokens, U._intermediate(model))[1]
        return [kept[n] for n in U._intermediate(model)]
    texts = ["Ann Lee was born in Oslo.", "Bo Ek and Ann Lee met.", "the dog sat on the mat"]
    lens = U._Lens.of(1.0, texts, ["Ann Lee", "Bo Ek"], ["Cy Ho", "Ann Lee", "Di Uu"], tiny)
    assert lens.swaps == {"Ann Lee was born in Oslo.": "Cy Ho was born in Oslo.",
                          "Bo Ek and Ann Lee met.": "Di Uu and Cy Ho met."}
    assert U._common_suffix([1, 2, 3, 4], [9, 3, 4]) == 2 and U._common_suffix([1], [2]) == 0
    with pytest.raises(ValueError, match="stand_ins"):
        U._Lens.of(1.0, texts, ["Ann Lee"], ["Ann Lee"], tiny)
    same = U._Lens(1.0, {t: t for t in texts[:2]}, copy_model(tiny))
    tokens, real = U._batch(tiny, texts)
    resid = intermediate(tiny, tokens)
    assert len(resid) == tiny.cfg.n_layers - 1
    # The same weights on the same texts, in batches of another size and padding: float32 log-probs that agree to
    # rounding (~1e-6 each), and the KL sum_v p (t - s) is at most their largest gap. Measured exactly 0.0 on the
    # AVX-512 path and on ATEN_CPU_CAPABILITY=default with one thread; 1e-5 is ten such gaps, and the perturbed
    # case below is > 1e-4.
    assert U._lens_loss(tiny, texts, tokens, real, resid, same).abs() < 1e-5
    assert U._lens_loss(tiny, texts[2:], tokens[2:], real[2:], [r[2:] for r in resid], same) is None
    with torch.no_grad():
        for p in same.teacher.parameters():
            p.add_(0.05)
    with torch.enable_grad():
        resid = intermediate(tiny, tokens)
        loss = U._lens_loss(tiny, texts, tokens, real, resid, same)
        loss.backward()
    assert loss > 1e-4 and any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny.parameters())
    with pytest.raises(ValueError, match="lens_weight"):
        U.UndoConfig(lens_weight=-1)


def test_the_benches_undo_is_the_recall_stopped_recipe_and_undoes(organism_model, world):
    """The registered undo, as bench robust and bench unlearn run it: its teacher (swap at the mask), then
    alpha 0.6 on the context's sample, the recall stop read on 200 retained facts, every parameter (at most
    2 steps here), one record undone bit for bit."""
    from excise.context import KnowledgeContext
    from excise.organism import corpus

    forget = list(world.of_subject(world.people[5]))
    kept = list(world.retain_set(forget, n=250, seed=0))
    context = KnowledgeContext(retain=kept, stand_ins=world.strangers(3), sample=corpus())
    mask = [Component(0, "neuron", i) for i in range(32)]
    before = weights(organism_model)
    undo = get("undo")
    record = undo.run(organism_model, forget, context, undo.configure(max_steps=2, seed=3, progress=False), mask)
    try:
        assert (record.method, record.hyper["alpha"], record.hyper["stop"], record.hyper["seed"]) == \
            ("undo", 0.6, "recall", 3)
        assert record.meta["teacher"]["method"] == "unlearn_swap" and record.meta["teacher"]["meta"]["steps"] == 200
        assert record.meta["steps"] == 2 and len(record.meta["history"]) == 1
        assert record.n_changed == sum(p.numel() for p in storage_owners(organism_model).values())
    finally:
        record.undo()
    assert same(before, weights(organism_model))
