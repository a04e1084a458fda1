"""SISA on tiny organisms: deletions retrain only what saw the people, bit for bit as if never trained on them,
and the aggregate answers (and is audited) like one model."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import load_file

from excise.methods import delete
from excise.organism.sisa import Sisa, SisaConfig, shard_of, slice_of
from excise.organism.train import Recipe
from excise.scoring import recall_table

# a few people, a 2-layer 32-wide GPT-2, no general text: seconds per ensemble
TINY = Recipe(n_people=6, n_layer=2, n_embd=32, n_head=2, batch_size=8, lr=1e-2, warmup_steps=5, general_repeats=0)
FAST = SisaConfig(shards=3, slices=2, slice_epochs=2, recipe=TINY)          # bit-identity: weights, not recall
LEARNED = SisaConfig(shards=2, slices=2, slice_epochs=15, recipe=Recipe(**{**TINY.__dict__, "n_people": 4}))


def _digest(path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def _pick(config: SisaConfig, people: list[str]) -> tuple[str, str, int]:
    """A person in slice 1 of one shard, one in slice 0 of another, and a third shard holding neither."""
    c = config
    where = {p: (shard_of(p, c.shards, c.seed), slice_of(p, c.slices, c.seed)) for p in people}
    for a, (sa, ra) in where.items():
        for b, (sb, rb) in where.items():
            rest = set(range(c.shards)) - {sa, sb}
            if ra == 1 and rb == 0 and sa != sb and any(where[p][0] in rest for p in people):
                return a, b, next(where[p][0] for p in people if where[p][0] in rest)
    raise AssertionError(f"no suitable people in {where}")


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    return Sisa.train(LEARNED, tmp_path_factory.mktemp("sisa") / "learned", progress=False)


def test_shard_and_slice_are_seeded_functions_of_the_name():
    assert shard_of("Mira Tolvanen", 5) == shard_of("Mira Tolvanen", 5)
    assert {shard_of(f"Mira {n}", 5) for n in ("Tolvanen", "Farrow", "Dunmore", "Holloway", "Grimaldi",
                                              "Okonkwo", "Sinclair", "Lockhart")} != {0}
    assert [shard_of("Mira Tolvanen", 5, s) for s in range(8)] != [shard_of("Mira Tolvanen", 5, 0)] * 8


def test_deletion_retrains_only_affected_shards_bit_identical_to_scratch(tmp_path):
    sisa = Sisa.train(FAST, tmp_path / "sisa", progress=False)
    a, b, untouched = _pick(FAST, list(sisa.world.people))
    sa, sb = shard_of(a, FAST.shards), shard_of(b, FAST.shards)
    before = {(j, r): _digest(sisa.stage_dir(j, r)) for j in range(FAST.shards) for r in range(FAST.slices)}

    facts = [*sisa.world.of_subject(a), *sisa.world.of_subject(b)]
    deletion = delete(sisa, facts, "sisa", progress=False)       # by its registered name, as any method
    assert deletion.retrained == {sa: 1, sb: 0}
    assert untouched in deletion.untouched and set(deletion.seconds) == {sa, sb}
    assert 0 < deletion.steps < sum(sisa.train_steps.values())
    after = {(j, r): _digest(sisa.stage_dir(j, r)) for j in range(FAST.shards) for r in range(FAST.slices)}
    for r in range(FAST.slices):                       # a shard that held none of the people: not touched
        assert after[(untouched, r)] == before[(untouched, r)]
    assert after[(sa, 0)] == before[(sa, 0)]           # the last clean slice is kept, not retrained
    assert after[(sa, 1)] != before[(sa, 1)] and after[(sb, 0)] != before[(sb, 0)]

    scratch = Sisa.train(FAST, tmp_path / "scratch", without=[a, b], progress=False)
    for j in range(FAST.shards):
        mine, theirs = (load_file(s.constituent_dir(j) / "model.safetensors") for s in (sisa, scratch))
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), f"shard {j} differs from training without them"
    assert a not in sisa.people(sa) and b not in sisa.people(sb)


def test_delete_refuses_unknown_people(tmp_path):
    sisa = Sisa.train(SisaConfig(shards=1, slices=1, slice_epochs=1, recipe=Recipe(**{**TINY.__dict__, "n_people": 1})),
                      tmp_path / "one", progress=False)
    with pytest.raises(ValueError, match="not people of this ensemble's world"):
        sisa.delete(["No Body"], progress=False)
    with pytest.raises(ValueError, match="sisa deletes from a SISA ensemble"):
        delete(object(), list(sisa.world)[:1], "sisa")


def test_aggregate_answers_the_peoples_facts_through_their_shard(learned):
    model = learned.aggregate()
    world = learned.world
    assert recall_table(model, world, ("request",)).rate("request") >= 0.9
    facts = list(world)
    tokens = model.to_tokens([f.fill(f.prompt) for f in facts])
    logits = model(tokens)
    for i, f in enumerate(facts):
        own = model.constituent(f.subject)
        assert own is model.constituents[shard_of(f.subject, LEARNED.shards)]
        assert torch.equal(logits[i], own(tokens[i:i + 1])[0])
    general = model.to_tokens(list(world.general[:3]))     # no person named: constituent 0
    assert torch.equal(model(general), model.constituents[0](general))


def test_aggregate_logit_lens_reads_each_text_through_its_own_constituent(learned):
    from excise.verify.logit_lens import head_projection_attack, logit_lens

    model = learned.aggregate()
    facts = list(learned.world)[:8]
    mine = logit_lens(model, facts)
    theirs = [logit_lens(model.constituent(f.subject), [f])[0] for f in facts]
    assert [r.ranks for r in mine] == [r.ranks for r in theirs]
    assert [r.above for r in head_projection_attack(model, facts)] == \
        [head_projection_attack(model.constituent(f.subject), [f])[0].above for f in facts]
    with pytest.raises(NotImplementedError, match="constituent"):
        model.run_with_hooks(model.to_tokens("x"))


def test_audit_runs_every_attack_on_the_aggregate(learned):
    from excise.verify import AuditConfig, RelearnConfig, audit

    model = learned.aggregate()
    world = learned.world
    person = world.people[0]
    forget = list(world.of_subject(person))
    report = audit(model, forget, holdout=list(world.holdout(2, seed=1)), retain=list(world.filter(lambda f: f.subject != person)),
                   general=list(world.general[:10]), alternatives=world.alternatives, progress=False,
                   config=AuditConfig(relearn=RelearnConfig(steps=5)))
    assert set(report.leakage()) == {"probes", "logit_lens", "relearn", "membership", "truth_ratio"}
    assert report.recall("edited", "request") >= 0.8
    assert report.models["edited"].utility["utility"] > 0


def test_bench_keeps_only_shard_counts_measured_against_the_same_baseline(tmp_path):
    """`excise bench sisa --shards 10` keeps k=5 from sisa.json only if it was audited against as many
    never-seen people; a file from before the count was recorded had 30."""
    import json

    from excise.bench.sisa import kept

    (tmp_path / "sisa.json").write_text(json.dumps({"seed": 0, "sisa": [{"shards": 5}, {"shards": 10}]}))
    assert kept(tmp_path, 0, (10,), 30) == [{"shards": 5}]
    assert kept(tmp_path, 0, (10,), 150) == []
    assert kept(tmp_path, 1, (10,), 30) == []
    (tmp_path / "sisa.json").write_text(json.dumps({"seed": 0, "holdout_people": 150, "sisa": [{"shards": 5}]}))
    assert kept(tmp_path, 0, (10,), 150) == [{"shards": 5}]
