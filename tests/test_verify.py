"""verify: every metric on a case checkable by hand, the audit's contracts, and its calibration."""

import json
import math

import numpy as np
import pytest
import torch

import excise
from excise.scoring import general_loss
from excise.verify import (
    AuditConfig,
    AuditReport,
    RelearnConfig,
    auc,
    audit,
    forget_quality,
    guardrail,
    logit_lens,
    membership_scores,
    probe,
    relearn,
    truth_ratios,
)
from excise.verify.leakage import AttackVerdict, compare, compare_layers, detectable_effect, mann_whitney
from excise.verify.membership import answer_scores, lowest_mean
from excise.verify.specificity import kept, neighbours_of
from excise.weights import copy_model, linear

SMALL = AuditConfig(relearn=RelearnConfig(steps=3))


def small_context(facts, people: int = 3, retain: int = 20):
    return excise.organism.context(facts, n_holdout_people=people, n_retain=retain)


@pytest.fixture(scope="module")
def two_people(world):
    return [f for s in world.people[:2] for f in world.of_subject(s)]


# -- metrics on hand-checkable cases ------------------------------------------

def test_auc_by_hand():
    assert auc([3, 4], [1, 2]) == 1.0
    assert auc([1, 2], [3, 4]) == 0.0
    assert auc([1, 3], [2, 2]) == 0.5          # one win, one loss
    assert auc([2], [2]) == 0.5                 # a tie counts half
    with pytest.raises(ValueError, match="at least one"):
        auc([], [1])


def test_mann_whitney_auc_and_direction_by_hand():
    assert mann_whitney([3, 4], [1, 2])[0] == 1.0
    assert mann_whitney([1, 3], [2, 2])[0] == 0.5
    assert mann_whitney([5, 5, 5], [5, 5])[1] == 1.0           # one repeated value: no evidence, not NaN
    rng = np.random.default_rng(0)
    low, high = rng.integers(0, 5, 60), rng.integers(10, 50, 60)
    leak = compare("probes", low, high, negate=True)             # forget ranks better than never-seen
    assert leak.verdict == leak.direction == "leaks" and leak.auc == 1.0 and leak.p_value < 1e-10
    over = compare("probes", high, low, negate=True)
    assert over.verdict == "over_suppressed" and over.auc == 0.0
    same = compare("probes", rng.integers(0, 50, 90), rng.integers(0, 50, 90), negate=True)
    assert same.verdict == "indistinguishable" and same.detectable_effect < 0.25
    few = compare("probes", [30, 9, 41, 20, 7, 25], rng.integers(0, 50, 120), negate=True)
    assert few.verdict == "underpowered" and few.n_facts == 6
    assert AttackVerdict.from_dict(leak.to_dict()) == leak
    with pytest.raises(ValueError, match="verdict must be one of"):
        AttackVerdict(**{**leak.to_dict(), "verdict": "clean"})


def test_detectable_effect_is_noethers_formula():
    # (z_0.975 + z_0.8) * sqrt((n1 + n2 + 1) / (12 n1 n2))
    assert detectable_effect(90, 180) == pytest.approx((1.959964 + 0.841621) * math.sqrt(271 / (12 * 90 * 180)),
                                                       rel=1e-5)
    assert detectable_effect(6, 120) > 0.25 > detectable_effect(90, 90)
    # it is the effect the test finds 80% of the time: simulate shifted normals with that AUC
    from scipy.stats import norm
    d = detectable_effect(40, 40)
    shift = math.sqrt(2) * norm.ppf(0.5 + d)                     # P(X > Y) = 0.5 + d for N(shift, 1) vs N(0, 1)
    rng = np.random.default_rng(1)
    hits = [mann_whitney(rng.normal(shift, 1, 40), rng.normal(0, 1, 40))[1] < 0.05 for _ in range(400)]
    assert 0.72 <= np.mean(hits) <= 0.88


def test_the_lens_is_tested_per_layer_with_bonferroni():
    rng = np.random.default_rng(0)
    holdout = rng.integers(0, 40, (90, 4))
    facts = rng.integers(0, 40, (90, 4))
    facts[:, 2] = 0                                             # readable at layer 2 only
    v = compare_layers(facts, holdout)
    assert v.verdict == "leaks" and v.layer in (2, None) and len(v.layers) == 5
    assert v.detectable_effect == pytest.approx(detectable_effect(90, 90, 0.05 / 5))
    assert all(r["p_value"] <= 1 for r in v.layers)


def test_min_k_takes_the_lowest_fraction():
    assert lowest_mean(np.array([-1.0, -5.0, -2.0, -3.0, -4.0]), 0.4) == -4.5     # mean of -5, -4
    assert lowest_mean(np.array([-1.0]), 0.2) == -1.0                            # at least one token


def test_forget_quality_is_the_ks_p_value():
    assert forget_quality([0.1, 0.2, 0.3], [0.1, 0.2, 0.3]) == 1.0
    assert forget_quality(np.arange(30), np.arange(30) + 100) < 1e-6
    with pytest.raises(ValueError):
        forget_quality([], [1.0])


def test_kept_counts_only_what_the_reference_knew():
    assert kept([True, True, False], [True, False, True]) == 0.5
    assert kept([False], [True]) is None


def test_neighbours_kept_splits_same_subject_from_other_subjects():
    """A per-subject edit takes the subject's other facts along: the report gives that figure on its own."""
    facts = [{"subject": "A B", "relation": "r1", "target": "x"}]
    neighbours = [{"subject": "A B", "relation": "r2"}, {"subject": "A B", "relation": "r3"},
                  {"subject": "C D", "relation": "r1"}, {"subject": "E F", "relation": "r1"}]
    models = {"reference": {"neighbours": [True, True, True, False], "retain": [True]},
              "edited": {"neighbours": [False, True, True, True], "retain": [True]}}
    report = AuditReport.from_dict({"config": {}, "facts": facts, "neighbours": neighbours, "models": models,
                                    "seconds": 0.0})
    assert report.kept("neighbours") == pytest.approx(2 / 3)
    assert report.kept("same_subject") == 0.5 and report.kept("other_subjects") == 1.0
    with pytest.raises(ValueError, match="same_subject"):
        report.kept("cousins")


def test_membership_scores_match_a_hand_computation(organism_model):
    text = "Dorian Elsworth was born in Zorvath"
    s = membership_scores(organism_model, [text], k=1.0)
    tokens = organism_model.to_tokens(text)
    with torch.no_grad():
        logp = organism_model(tokens).log_softmax(-1)[0, :-1]
    tok = logp.gather(-1, tokens[0, 1:, None])[:, 0]
    assert s["loss"][0] == pytest.approx(float(tok.mean()), abs=1e-5)
    assert s["min_k"][0] == pytest.approx(float(tok.mean()), abs=1e-5)           # k = 100%: every token
    p = logp.exp()
    mu = (p * logp).sum(-1)
    sigma = ((p * logp ** 2).sum(-1) - mu ** 2).sqrt()
    assert s["min_k_pp"][0] == pytest.approx(float(((tok - mu) / sigma).mean()), abs=1e-4)


def test_answer_scores_are_the_answer_tokens_given_the_prompt(organism_model, world):
    fact = world[0]
    s = answer_scores(organism_model, [fact])
    toks = organism_model.to_tokens(f"{fact.fill(fact.prompt)} {fact.target}")
    n = len(organism_model.to_tokens(f" {fact.target}", prepend_bos=False)[0])
    with torch.no_grad():
        logp = organism_model(toks).log_softmax(-1)[0, :-1]
    assert s["answer_loss"][0] == pytest.approx(float(logp.gather(-1, toks[0, 1:, None])[-n:, 0].mean()), abs=1e-5)


def test_truth_ratio_by_hand(organism_model, world):
    fact = world[0]
    alts = world.alternatives(fact)[:2]
    ratios, right = truth_ratios(organism_model, [fact], lambda f: alts)
    losses = []                                  # mean token NLL of each answer
    for answer in [fact.target, *alts]:
        toks = organism_model.to_tokens(f"{fact.fill(fact.prompt)} {answer}")
        n = len(organism_model.to_tokens(f" {answer}", prepend_bos=False)[0])
        with torch.no_grad():
            logp = organism_model(toks).log_softmax(-1)[0, :-1]
        losses.append(-float(logp.gather(-1, toks[0, 1:, None])[-n:, 0].sum()) / n)
    assert right[0] == pytest.approx(math.exp(-losses[0]), rel=1e-4)
    # TOFU's R: the wrong answers' losses averaged (a geometric mean of probabilities), right over wrong
    assert ratios[0] == pytest.approx(math.exp((losses[1] + losses[2]) / 2 - losses[0]), rel=1e-3)
    assert ratios[0] > 1                         # the organism knows its fact


def test_general_loss_by_hand(organism_model):
    text = "Zorvath is a city."
    toks = organism_model.to_tokens(text)
    with torch.no_grad():
        logp = organism_model(toks).log_softmax(-1)[0, :-1]
    expected = -float(logp.gather(-1, toks[0, 1:, None]).mean())
    assert general_loss(organism_model, [text, text]) == pytest.approx(expected, abs=1e-5)


def test_probe_ranks_agree_with_recall_table(organism_model, two_people):
    rows = probe(organism_model, two_people, ("request", "held_out"), top_k=5)
    table = excise.recall_table(organism_model, two_people, ("request", "held_out"))
    assert [r.rank for r in rows] == [r["rank"] for r in table.rows]
    for r in rows:
        assert len(r.top) == 5 and r.recalled == (r.top[0].strip() == r.target.split()[0] or r.rank == 0)
        assert r.seq_logprob <= math.log(r.prob) + 1e-5        # the whole answer is no likelier than its start


def test_logit_lens_last_layer_is_the_model_output(organism_model, two_people):
    lens = logit_lens(organism_model, two_people, ("request",))
    rows = probe(organism_model, two_people, ("request",))
    assert len(lens[0].ranks) == organism_model.cfg.n_layers
    assert [l.ranks[-1] for l in lens] == [r.rank for r in rows]


def test_copy_model_is_independent_and_keeps_views(organism_model):
    copy = copy_model(organism_model)
    before = excise.fingerprint(organism_model)
    params = dict(copy.named_parameters())
    fused = next(n for n in params if n.endswith("attn.qkv._original_component.weight"))
    view = fused.replace("qkv", "q")
    assert params[fused].untyped_storage().data_ptr() == params[view].untyped_storage().data_ptr()
    with torch.no_grad():
        params[fused].add_(1.0)
    assert excise.fingerprint(organism_model) == before


# -- attacks --------------------------------------------------------------------

def test_relearn_leaves_the_model_alone_and_covers_every_fact(organism_model, two_people):
    before = excise.fingerprint(organism_model)
    result = relearn(organism_model, two_people, RelearnConfig(steps=2))
    assert excise.fingerprint(organism_model) == before
    assert sorted((p.subject, p.relation) for p in result.probes) == sorted(f.key for f in two_people)
    with pytest.raises(ValueError, match="at least 2 facts"):
        relearn(organism_model, two_people[:1])


def test_guardrail_fools_the_probe_not_the_lens_and_cleans_up(organism_model, two_people):
    with guardrail(organism_model, two_people):
        rows = probe(organism_model, two_people, ("request",))
        lens = logit_lens(organism_model, two_people, ("request",))
    assert all(r.rank > 100 for r in rows)                  # pushed below everything
    assert all(l.best_rank == 0 for l in lens)              # still the top answer inside
    assert all(r.recalled for r in probe(organism_model, two_people, ("request",)))     # hook gone
    with pytest.raises(RuntimeError):
        with guardrail(organism_model, two_people):
            raise RuntimeError("boom")
    assert all(r.recalled for r in probe(organism_model, two_people, ("request",)))


# -- audit ----------------------------------------------------------------------

def test_audit_of_the_original_finds_everything(organism_model, two_people):
    report = audit(organism_model, two_people, config=SMALL, context=small_context(two_people), progress=False)
    assert report.recall("edited") == 1.0
    for attack in ("probes", "logit_lens", "membership"):
        assert report.success("edited", attack) == 1.0, attack
    assert report.chance("edited", "membership") == 0.05
    verdicts = report.leakage()
    assert set(verdicts) == {"probes", "logit_lens", "relearn", "membership", "truth_ratio"}
    assert all(v.direction == "leaks" and v.n_facts == 12 for v in verdicts.values())
    assert {a: v.n_holdout for a, v in verdicts.items()} == {   # relearn: a holdout sample as large as the facts
        "probes": 18, "logit_lens": 18, "relearn": 12, "membership": 18, "truth_ratio": 18}
    assert report.summary().startswith("edited vs never-seen facts (two-sided Mann-Whitney): probes: ")
    assert 0 <= report.chance("edited", "logit_lens") <= 1
    assert "attack success: logit_lens (top-20)" in report.summary()


def test_relearn_baseline_draws_whole_people_and_reads_their_spread(organism_model, two_people, world):
    """relearn_draws=1: a random sample of as many facts as the audit's (as before); k >= 2: k disjoint draws
    of whole never-seen people, each relearned apart, and with k >= 3 the verdict's spread read from them."""
    from excise.verify.attacks.relearn import draws

    facts = [f for s in world.people[:7] for f in world.of_subject(s)]            # 7 people x 6 facts
    assert draws(facts, 12, 1, seed=3) == [__import__("random").Random(3).sample(facts, 12)]
    three = draws(facts, 12, 3, seed=3)
    assert [len(d) for d in three] == [12, 12, 12]
    people = [{f.subject for f in d} for d in three]
    assert [len(p) for p in people] == [2, 2, 2] and len(set().union(*people)) == 6      # whole, disjoint
    assert len(draws(facts, 12, 9, seed=3)) == 3                            # as many as fit
    assert draws(facts, None, 3, seed=3) == [facts] == draws(facts, 42, 3, seed=3)
    with pytest.raises(ValueError, match="relearn_draws"):
        AuditConfig(relearn_draws=0)
    config = AuditConfig(attacks=("relearn",), relearn=RelearnConfig(steps=1), relearn_draws=3)
    report = audit(organism_model, two_people[:6], config=config, context=small_context(two_people), progress=False)
    verdict = report.leakage()["relearn"]
    assert verdict.n_holdout == 18 and "spread from 3 never-seen draws" in verdict.statistic


def test_compare_draws_reads_the_spread_of_the_draws():
    """Hand-made draws: a holdout whose draws disagree widens the test; below Noether's SD it does not narrow."""
    from excise.verify.leakage import compare, compare_draws

    rng = np.random.default_rng(0)
    facts = rng.normal(0.3, 1, 60)
    alike = rng.normal(0, 1, 240)
    apart = np.concatenate([rng.normal(m, 1, 60) for m in (-0.6, 0.6, -0.4, 0.4)])
    per_fact = compare("x", facts, alike)
    same = compare_draws("x", facts, alike, [60] * 4)
    wide = compare_draws("x", facts, apart, [60] * 4)
    assert same.auc == per_fact.auc
    assert same.p_value > per_fact.p_value             # Student's t on 3 df at >= Noether's SD: never narrower
    assert wide.detectable_effect > 2 * same.detectable_effect and wide.p_value > same.p_value
    with pytest.raises(ValueError, match=">= 3 draws"):
        compare_draws("x", facts, alike, [120, 120])


def test_audit_is_deterministic_leaves_the_model_and_round_trips(organism_model, two_people, tmp_path):
    before = excise.fingerprint(organism_model)
    a = audit(organism_model, two_people, reference=organism_model, config=SMALL,
              context=small_context(two_people), progress=False)
    b = audit(organism_model, two_people, reference=organism_model, config=SMALL,
              context=small_context(two_people), progress=False)
    assert excise.fingerprint(organism_model) == before
    drop = lambda r: {role: {k: v for k, v in m.to_dict().items() if k != "seconds"}  # noqa: E731
                      for role, m in r.models.items()}
    assert drop(a) == drop(b)
    a.save(tmp_path / "audit.json")
    back = AuditReport.load(tmp_path / "audit.json")
    assert back.models["edited"].to_dict() == json.loads(json.dumps(a.models["edited"].to_dict()))   # typed, both ways
    assert isinstance(back.models["edited"].chance.probes, list) and back.models["edited"].membership is not None
    with pytest.raises(ValueError, match="for a file, use AuditReport.load"):
        AuditReport.from_json(str(tmp_path / "audit.json"))
    assert back.rows() == a.rows() and back.summary() == a.summary()
    assert back.leakage() == a.leakage() and a.to_markdown().startswith("- edited vs never-seen")
    old = json.loads(a.to_json())                                # a report written before the verdicts were stored
    for m in old["models"].values():
        del m["leakage"]
    assert AuditReport.from_json(json.dumps(old)).leakage("reference") == a.leakage("reference")
    assert json.loads(a.to_json())["facts"][0]["subject"] == two_people[0].subject
    assert a.kept("neighbours") == 1.0 and a.utility("edited") == pytest.approx(1.0)
    assert dict(a.rows())["neighbour recall: other subjects"]["edited"] == a.kept("other_subjects") == 1.0
    fig = a.plot()
    assert [ax.get_title() for ax in fig.axes][:2] == ["Logit lens: where the answer is readable",
                                                      "Attack success (black ticks: chance on never-seen facts)"]


def test_success_at_another_b_needs_no_rerun(organism_model, two_people):
    report = audit(organism_model, two_people, attacks=("logit_lens",), progress=False,
                   config=AuditConfig(attacks=("logit_lens",)), context=small_context(two_people))
    assert report.success("edited", "logit_lens", b=1) <= report.success("edited", "logit_lens", b=20)
    assert report.models["edited"].attacks.relearn is None


def test_audit_bad_input(organism_model, two_people, tiny):
    with pytest.raises(ValueError, match="at least one fact"):
        audit(organism_model, [], progress=False)
    with pytest.raises(ValueError, match="top_b"):
        AuditConfig(top_b=0)
    with pytest.raises(ValueError, match="unknown attacks"):
        AuditConfig(attacks=("telepathy",))
    with pytest.raises(ValueError, match="another vocabulary"):
        audit(organism_model, two_people, reference=tiny, config=SMALL, progress=False)


def test_what_the_audit_cannot_compute_is_reported_not_dropped(organism_model, two_people):
    """Without a context the audit still runs, and says which verdicts are missing and why."""
    report = audit(organism_model, two_people, config=AuditConfig(attacks=("probes",)), progress=False)
    missing = report.config["not_computed"]
    assert set(missing) == {"chance levels and membership inference", "retain recall and model utility",
                            "general-text loss and model utility", "truth ratios and forget quality",
                            "the retrain-oracle column, forget quality, privleak and the reference membership attack"}
    assert "pass holdout=" in missing["chance levels and membership inference"]
    assert "not computed: chance levels and membership inference (no holdout" in report.summary()
    full = audit(organism_model, two_people, config=AuditConfig(attacks=("probes",)),
                 context=small_context(two_people), progress=False)
    assert set(full.config["not_computed"]) == {"the retrain-oracle column, forget quality, privleak and the reference membership attack"}
    with pytest.raises(ValueError, match="oracle=True takes the context's oracle"):
        audit(organism_model, two_people, oracle=True, progress=False)


def test_neighbours_exclude_the_facts_themselves(two_people):
    keys = {f.key for f in two_people}
    assert neighbours_of(two_people) and all(n.key not in keys for n in neighbours_of(two_people))


def test_an_unchanged_model_is_audited_once_and_a_hooked_or_edited_one_again(organism_model, world, monkeypatch):
    import importlib

    audit_module = importlib.import_module("excise.verify.audit")
    from excise.verify.calibration import guardrail

    calls = []
    real = audit_module._audit_one
    monkeypatch.setattr(audit_module, "_audit_one", lambda m, *a, **k: calls.append(a[-3]) or real(m, *a, **k))
    forget = list(world.of_subject(world.people[21]))
    context = excise.organism.context(forget, n_holdout_people=3, n_retain=20)
    config = AuditConfig(attacks=("probes",))
    reference = copy_model(organism_model)
    first = audit(organism_model, forget, reference=reference, context=context, config=config, progress=False)
    again = audit(organism_model, forget, reference=reference, context=context, config=config, progress=False)
    assert calls == ["edited"]                       # the reference has the same weights: the edited's audit, kept
    assert {k: v for k, v in again.to_dict().items() if k != "seconds"} == \
        {k: v for k, v in first.to_dict().items() if k != "seconds"}
    with guardrail(organism_model, forget):                       # same weights, other answers: audited again
        guarded = audit(organism_model, forget, context=context, config=config, progress=False)
    assert calls == ["edited", "edited"]
    assert first.recall("edited", "request") == 1.0 and guarded.recall("edited", "request") == 0.0
    assert not audit_module._hooked(organism_model)               # the libraries' own capturing hooks do not count
    handle = organism_model.register_forward_hook(lambda module, args, out: out)     # a user's torch hook does
    try:
        assert audit_module._hooked(organism_model)
    finally:
        handle.remove()
    w = linear(organism_model, 0, "mlp.out").weight
    kept = w.detach().clone()
    with torch.no_grad():
        w.mul_(0.5)                                               # another fingerprint: audited again
    try:
        audit(organism_model, forget, context=context, config=config, progress=False)
        assert calls == ["edited", "edited", "edited"]
    finally:
        with torch.no_grad():
            w.copy_(kept)


# -- calibration: the verdicts must be true (shares the session's retrain oracle) --

@pytest.mark.slow
def test_calibration_the_original_leaks_and_the_oracle_is_indistinguishable(oracle_5pct):
    """The two-sided verdicts are true on models whose truth is known (90 forget facts, 90 never-seen ones)."""
    forget, _, oracle = oracle_5pct
    forget = list(forget)
    original = excise.load("organism", device="cpu")
    base = audit(original, forget, oracle=oracle, context=excise.organism.context(forget, 15, 50), progress=False)
    every = {"probes", "logit_lens", "relearn", "membership", "truth_ratio"}
    assert {a: v.verdict for a, v in base.leakage("edited").items()} == dict.fromkeys(every, "leaks")
    assert {a: v.verdict for a, v in base.leakage("oracle").items()} == dict.fromkeys(every, "indistinguishable")
    assert base.forget_quality("oracle") >= 0.5


@pytest.mark.slow
def test_calibration_a_guardrail_over_suppression_and_last_layer_suppression_are_caught(oracle_5pct):
    """The same split: three ways to look forgotten without being so (a test of its own: the suite's two
    workers share the calibration)."""
    from excise.verify import suppress_last_layer
    from excise.verify.calibration import over_suppress

    forget, retain, _ = oracle_5pct
    forget = list(forget)
    original = excise.load("organism", device="cpu")
    context = excise.organism.context(forget, 15, 50)
    with guardrail(original, forget):
        guarded = audit(original, forget, progress=False, context=context,
                        config=AuditConfig(attacks=("probes", "logit_lens")))
    assert guarded.recall("edited", "request") == 0.0                        # "forgotten" at the output...
    assert guarded.leakage()["logit_lens"].verdict == "leaks"                # ...readable inside

    npo = copy_model(original)
    over_suppress(npo, forget, list(retain.sample(400, seed=7)), steps=60, lr=3e-3)
    over = audit(npo, forget, progress=False, context=context, config=AuditConfig(attacks=("probes",)))
    assert {a: v.verdict for a, v in over.leakage().items()} == dict.fromkeys(("probes", "truth_ratio"),
                                                                              "over_suppressed")

    suppress_last_layer(original, forget, list(retain.sample(400, seed=7)))
    shallow = audit(original, forget, progress=False, context=context,
                    config=AuditConfig(attacks=("probes", "relearn")))
    assert shallow.recall("edited", "request") == 0.0
    assert shallow.leakage()["relearn"].verdict == "leaks"                   # it comes back: hidden, not removed


def test_entanglement_of_a_no_op_edit_is_zero_and_of_rome_is_diagonal(tmp_path):
    from excise.edit import recording

    model = excise.load("organism")
    world = excise.organism.world()
    facts = [f for s in world.subjects[:2] for f in world.of_subject(s)][:8]

    def no_op(m, fact):
        with recording(m, "no-op") as box:
            pass
        return box["record"]

    flat = excise.experiments.entanglement(model, facts, edit=no_op, k=8, progress=False)
    assert np.all(flat.delta_logp == 0) and np.all(flat.recall == flat.recall_before[None, :])
    assert np.allclose(np.diag(flat.overlap), 1.0)
    assert flat.correlation["rho"] is None                                    # no interference to correlate

    ent = excise.experiments.entanglement(model, facts, k=8, progress=False, context=excise.organism.context(facts))
    assert [f["subject"] for f in ent.facts] == sorted(f["subject"] for f in ent.facts)
    diag, off = np.diag(ent.interference), ent.interference[~np.eye(len(facts), dtype=bool)]
    assert diag.mean() > 10 * np.abs(off).mean()                               # deleting i hurts i most
    groups = ent.by_group()
    assert groups["deleted fact itself"]["recall_kept"] < 0.5 and groups["unrelated"]["recall_kept"] >= 0.9
    ent.save(tmp_path / "e.json")
    back = excise.experiments.Entanglement.load(tmp_path / "e.json")
    assert np.array_equal(back.recall, ent.recall) and back.correlation == ent.correlation
    assert ent.plot().axes[0].get_xlabel() == "fact j (measured)"
    with pytest.raises(ValueError, match="at least two facts"):
        excise.experiments.entanglement(model, facts[:1])
