"""Issue 37's attacks: weights rounded to 8 and 4 bits, the answers' teacher-forced memorization, membership by
gradient norm and against the oracle, and the depth of a deletion by patching (UDS)."""

from __future__ import annotations

import pytest
import torch

import excise
from excise.verify.quantize import quantized, round_to_nearest
from excise.weights import linear


def test_round_to_nearest_is_per_output_channel_absmax():
    W = torch.tensor([[1.0, -0.2], [0.6, 0.12], [-0.26, 0.05]])     # [d_in 3, d_out 2]
    q = round_to_nearest(W, 2)                                       # levels -1, 0, 1 times max|column|
    assert torch.equal(q, torch.tensor([[1.0, -0.2], [1.0, 0.2], [0.0, 0.0]]))
    q8 = round_to_nearest(W, 8)                                      # 127 levels: error <= half a step
    # plus float32's rounding of k x scale (half an ulp of |W| <= 1: 6e-8, under the 1e-7 slack); elementwise
    # IEEE operations round the same on every CPU path. The column's extreme is 127 x (max / 127): one ulp off
    assert ((q8 - W).abs() <= W.abs().amax(0) / 127 / 2 + 1e-7).all()
    assert torch.allclose(q8.abs().amax(0), W.abs().amax(0), rtol=2 ** -23, atol=0)
    with pytest.raises(ValueError, match="bits must be in 2..16"):
        round_to_nearest(W, 1)


def test_quantized_rounds_every_block_linear_of_a_copy(tiny):
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    q = quantized(tiny, 4)
    assert all(torch.equal(before[n], p) for n, p in tiny.named_parameters())           # the model given: unchanged
    for layer in range(tiny.cfg.n_layers):
        for name in ("mlp.in", "mlp.out", "attn.q", "attn.o"):
            W = linear(q, layer, name).W
            assert max(len(torch.unique(W[:, j])) for j in range(W.shape[1])) <= 15, (layer, name)   # 2^4 - 1
    changed = {n for n, p in q.named_parameters() if not torch.equal(before[n], p)}
    assert changed and not any("embed" in n or "ln" in n or "norm" in n for n in changed), changed


def test_the_new_attacks_give_verdicts_and_the_original_organism_leaks_on_them(organism_model, world):
    """On the unedited organism, 20 facts against 20 never-seen people's: every new attack leaks. Its answers
    are one or two tokens, so open-unlearning's extraction strength (1 for a wrong one-token answer) says less
    than the full one."""
    from excise.verify import AuditConfig, audit

    facts = list(world.sample(20, seed=0))
    context = excise.organism.context(facts, 4, 20)
    new = ("quantization", "exact_memorization", "extraction_strength", "extraction_strength_full")
    report = audit(organism_model, facts, context=context, progress=False, config=AuditConfig(attacks=new))
    verdicts = {a: v.verdict for a, v in report.leakage().items()}
    assert {a: verdicts[a] for a in ("quantization", "exact_memorization", "extraction_strength_full")} == \
        dict.fromkeys(("quantization", "exact_memorization", "extraction_strength_full"), "leaks")


def test_the_cli_runs_the_attacks_named_and_refuses_an_unknown_one(tmp_path, world, capsys):
    import json

    from excise.cli import main

    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps([{"subject": s, "relation": "birthplace"} for s in world.subjects[:6]]))
    out = tmp_path / "audit"
    assert main(["verify", "organism", "--facts", str(facts), "--holdout-people", "6", "--attacks",
                 "quantization, exact_memorization", "--out", str(out)]) == 0
    report = excise.verify.AuditReport.load(out / "audit.json")
    assert set(report.leakage()) == {"quantization", "exact_memorization", "truth_ratio"}    # truth ratio rides along
    assert "leakage: quantization" in (out / "audit.md").read_text()
    assert main(["verify", "organism", "--facts", str(facts), "--attacks", "zap", "--out", str(out)]) == 2
    assert "unknown attacks ['zap']" in capsys.readouterr().err


def test_membership_against_the_oracle_and_the_depth_score_place_a_shallow_edit(organism_model, oracle_5pct):
    """20 facts of the 5% split, the shipped oracle trained without them, and an NPO that may change only the
    last block (recall 0 after it). Against never-seen people's facts, gradient norm and the reference attack
    (the oracle as reference) call the unedited model a leak; the oracle's own reference row is not computed
    (against itself it is 0 on every fact). UDS puts the last-block edit between the unedited model (0 exactly:
    its own states) and the oracle: only the last layer's states lost what the oracle lacks."""
    from excise.context import KnowledgeContext
    from excise.verify import AuditConfig, audit, suppress_last_layer
    from excise.weights import copy_model

    forget, retain, oracle = oracle_5pct
    facts = list(forget)[:20]
    # never-seen people's facts only: no truth ratios or utility, which these attacks do not need (7 of 10 s)
    context = KnowledgeContext(holdout=excise.organism.context(facts, 4, 20).holdout)
    config = AuditConfig(attacks=("membership", "gradnorm", "reference", "depth"))
    base = audit(organism_model, facts, oracle=oracle, context=context, progress=False, config=config)
    assert {a: base.leakage("edited")[a].verdict for a in ("gradnorm", "reference")} == \
        dict.fromkeys(("gradnorm", "reference"), "leaks")
    assert "reference" not in base.leakage("oracle") and base.depth("edited") is None     # no unedited model given
    assert "pass reference= and oracle=" in base.config["not_computed"]["the depth attack"]      # said, not dropped
    assert "the reference attack" not in base.config["not_computed"]
    assert base.privleak("edited") < -50 and base.privleak("oracle") is None             # members plain to see

    shallow = copy_model(organism_model)
    suppress_last_layer(shallow, facts, list(retain.sample(200, seed=7)))
    report = audit(shallow, facts, reference=organism_model, oracle=oracle, context=context, progress=False,
                   config=AuditConfig(attacks=("probes", "depth")))
    assert report.recall("edited") == 0.0 and report.depth("reference") == 0.0
    profile = report.models["edited"].attacks.extra["depth_rows"]["profile"]
    assert profile[:-1] == [0.0] * (len(profile) - 1) and profile[-1] > 0.9, profile
    assert 0.2 < report.depth("edited") < 0.6          # 0.387 on the AVX-512 and on the default float path
    assert report.success("edited", "depth") > 0.5                                # most facts read back out


def test_the_memorization_attacks_share_one_forward_within_an_audit_run(organism_model, world):
    from excise.verify.memorization import greedy_matches, shared_forwards

    facts = list(world.sample(6, seed=1))
    calls = []
    handle = organism_model.register_forward_hook(lambda *_: calls.append(1))
    try:
        alone = [greedy_matches(organism_model, facts), greedy_matches(organism_model, facts)]
        assert len(calls) == 2
        with shared_forwards():
            shared = [greedy_matches(organism_model, facts), greedy_matches(organism_model, facts)]
            greedy_matches(organism_model, facts[:3])                        # other facts: their own forward
        assert len(calls) == 4
    finally:
        handle.remove()
    assert alone[0] == alone[1] == shared[0] == shared[1]
