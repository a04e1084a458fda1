"""The model organism: a small GPT-2 trained on a synthetic world of fictitious people.

    world = excise.organism.world()          # every fact, with known ground truth
    model = excise.load("organism")          # the shipped checkpoint
    oracle = excise.organism.retrain(without=forget)   # the exact-unlearning gold standard
    sisa = excise.organism.Sisa.train(excise.organism.SisaConfig(shards=5), root)   # exact unlearning, sharded

The checkpoint under `checkpoint/` is a Hugging Face directory built by
`python -m excise.organism.train` from `Recipe()`; it is loaded through the
same local-directory path as any real checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path

from excise.cache import cache_dir
from excise.facts import Fact
from excise.methods import register as register_method
from excise.models import ModelLoadError, register_model
from excise.organism import sisa_method
from excise.organism.sisa import Sisa, SisaConfig
from excise.organism.train import Recipe
from excise.organism.world import RELATIONS, World

log = logging.getLogger(__name__)

CHECKPOINT_DIR = Path(__file__).parent / "checkpoint"
# Prebuilt retrain oracles (same key as the cache): the 5% split of `subjects_split(0.05, seed=0)`,
# which the verify benchmark, the tests and the notebooks use. Built by `retrain_dir` itself.
SHIPPED_ORACLES = Path(__file__).parent / "oracles"
_META = "excise_organism.json"

__all__ = ["CHECKPOINT_DIR", "EDIT_LAYER", "RELATIONS", "SHIPPED_ORACLES", "LazyOracle", "Recipe", "Sisa", "SisaConfig", "World",
           "checkpoint_ready", "context", "corpus", "recipe", "retrain", "retrain_dir", "world"]


def checkpoint_ready(path: Path = CHECKPOINT_DIR) -> bool:
    return all((path / f).exists() for f in ("config.json", "model.safetensors", "tokenizer.json", _META))


def _checkpoint() -> Path:
    if not checkpoint_ready():
        raise ModelLoadError(f"the organism checkpoint is missing from {CHECKPOINT_DIR}; rebuild it with "
                             "`python -m excise.organism.train`")
    return CHECKPOINT_DIR


def _lookup():
    """Short fact entries ({subject} or {subject, relation}) looked up in the organism's world."""
    w = world()

    def lookup(entry: dict):
        if "target" in entry or "prompt" in entry:
            return None
        subject = w.check_subject(str(entry.get("subject")), where="a person of the organism's world")
        if set(entry) - {"subject", "relation"}:
            raise ValueError(f"unknown field(s) {sorted(set(entry) - {'subject', 'relation'})} in a short entry; "
                             "give {subject} or {subject, relation}, or a whole fact")
        if "relation" not in entry:
            return list(w.of_subject(subject))
        return [w.fact(subject, entry["relation"])]

    return lookup


def _context(facts, n_holdout: int | None = None, seed: int = 0):
    return context(facts, n_holdout_people=n_holdout, seed=seed)


register_model("organism", _checkpoint, "the built-in model organism: a small GPT-2 trained on a synthetic world",
               context=_context, lookup=_lookup)
register_method(sisa_method.METHOD)     # exact unlearning where the model is a SISA ensemble of organisms


def recipe(path: Path = CHECKPOINT_DIR) -> Recipe:
    """The recipe the shipped checkpoint was trained with."""
    meta = json.loads((path / _META).read_text())
    return Recipe(**meta["recipe"])


@lru_cache(maxsize=4)
def world(seed: int | None = None, n_people: int | None = None) -> World:
    """The world the organism was trained on (or another seed's world)."""
    base = recipe() if checkpoint_ready() else Recipe()
    return World.generate(base.world_seed if seed is None else seed,
                          base.n_people if n_people is None else n_people)


def corpus() -> list[str]:
    """The organism's training corpus: the sample for ROME/MEMIT's key covariance on the organism."""
    from excise.organism.train import corpus as world_corpus

    return world_corpus(world())


def _oracle_key(rec: Recipe, without: list[Fact]) -> str:
    tokenizer_hash = hashlib.sha256((CHECKPOINT_DIR / "tokenizer.json").read_bytes()).hexdigest()
    payload = json.dumps({"recipe": asdict(rec), "without": sorted(list(f.key) for f in without),
                          "tokenizer": tokenizer_hash}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def retrain_dir(without: Iterable[Fact], rec: Recipe | None = None, progress: bool = True) -> Path:
    """The checkpoint directory of the organism recipe trained without `without`.

    Cached under `cache_dir()/oracles/<key>`, the key a hash of the recipe,
    the forget set and the tokenizer; looked up next among the oracles shipped
    with the package (`SHIPPED_ORACLES`); trained (minutes, with a progress
    bar) on a miss. The shipped tokenizer is reused so oracle and organism
    share one vocabulary.
    """
    from transformers import AutoTokenizer

    from excise.organism.train import train

    without = list(without)
    rec = rec or recipe()
    key = _oracle_key(rec, without)
    out = cache_dir() / "oracles" / key
    for found in (out, SHIPPED_ORACLES / key):
        if checkpoint_ready(found):
            log.info("retrain oracle cache hit: %s", found)
            return found
    tok = AutoTokenizer.from_pretrained(CHECKPOINT_DIR)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out.parent))
    try:
        train(rec, without=without, out=tmp, tokenizer=tok, progress=progress)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def retrain(without: Iterable[Fact], rec: Recipe | None = None, progress: bool = True, **load_kwargs):
    """The retrain oracle as a TransformerBridge: the organism never shown `without`."""
    from excise.models import load

    return load(retrain_dir(without, rec, progress), **load_kwargs)


class LazyOracle:
    """The retrain oracle for a forget set, trained (or found cached) only when first asked for."""

    def __init__(self, without: Iterable[Fact], progress: bool = True):
        self.without = list(without)
        self.progress = progress

    def __call__(self, **load_kwargs):
        return retrain(self.without, progress=self.progress, **load_kwargs)

    def __repr__(self) -> str:
        return f"LazyOracle(the organism retrained without {len(self.without)} facts)"


EDIT_LAYER = 0          # ROME/MEMIT on the organism: the MLP at the last subject token (benchmarks/results/edit.md)


HOLDOUT_PER_PERSON = 10   # never-seen people per forget person (at least MIN_HOLDOUT_PEOPLE); see context()
MIN_HOLDOUT_PEOPLE = 30


def holdout_size(facts: Iterable[Fact]) -> int:
    """How many never-seen people `context` draws for deleting `facts` by default."""
    return max(MIN_HOLDOUT_PEOPLE, HOLDOUT_PER_PERSON * len({f.subject for f in facts}))


def context(facts: Iterable[Fact], n_holdout_people: int | None = None, n_retain: int = 200, n_stand_ins: int = 60,
            seed: int = 0, progress: bool = True):
    """The organism world's KnowledgeContext for deleting `facts` (everything known, nothing derived).

    holdout: `n_holdout_people` people the world never had (seed + 1); by default
    10 per person of `facts`, at least 30. The never-seen baseline is a sample of
    people, and its people vary (measured on the 5% split's oracle, 15 people:
    the median logit-lens rank at layer 1 of a never-seen person's facts ranges
    2-33 over 30 people), which the per-fact test does not see: against 30
    never-seen people the oracle's logit lens read over_suppressed on 1 of 5
    draws (AUC 0.37, p 0.003), against 150 it is indistinguishable on every
    attack (lens AUC 0.43, p 0.14; `excise bench verify`). retain:
    `n_retain` facts of everyone else (all facts of the facts' subjects left
    out); general: the world's general sentences; alternatives: each
    relation's other objects; sample: the training corpus; stand_ins: never-seen
    names apart from the holdout people (seed + 2); oracle: the organism
    retrained without `facts`, trained on first use (`LazyOracle`); layer 0.
    """
    from excise.context import KnowledgeContext
    from excise.organism.train import corpus

    facts = list(facts)
    w = world()
    subjects = {f.subject for f in facts}
    if n_holdout_people is None:
        n_holdout_people = holdout_size(facts)
    holdout = list(w.holdout(n_holdout_people, seed=seed + 1))
    forget_all = [f for f in w if f.subject in subjects] if all(f in w for f in facts) else facts
    return KnowledgeContext(
        holdout=holdout,
        retain=list(w.retain_set(forget_all, n=n_retain, seed=seed)),
        general=list(w.general),
        alternatives=w.alternatives,
        sample=corpus(w),
        stand_ins=w.strangers(n_stand_ins, seed=seed + 2, exclude={f.subject for f in holdout}),   # swap never
        # trains on the audit's chance-level people
        oracle=LazyOracle(facts, progress) if all(f in w for f in facts) else None,
        layer=EDIT_LAYER,
        notes={"holdout": f"organism world: {n_holdout_people} people it never had (seed {seed + 1})",
               "retain": f"organism world: {n_retain} facts of other people (seed {seed})",
               "general": "organism world: its general sentences", "alternatives": "organism world: each relation's objects",
               "sample": "organism world: the training corpus", "stand_ins": "organism world: never-seen names, none of the holdout people",
               "oracle": "organism world: retrained without the facts on first use (cached)",
               "layer": "organism: layer 0, where subject-position edits work (benchmarks/results/edit.md)"},
    )
