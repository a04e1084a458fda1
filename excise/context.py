"""KnowledgeContext: what a method or an audit needs besides the model and the facts.

Deleting facts and proving them gone needs more than the facts themselves:

| field | used by | what it is |
|---|---|---|
| holdout | audit (chance levels, membership non-members) | facts about subjects the model never saw |
| retain | audit (specificity, utility), gradient unlearning, Fisher | facts the model must keep |
| general | audit (general-text loss, utility) | text unrelated to the facts |
| alternatives | audit (truth ratio, forget quality) | wrong answers for a fact |
| sample | ROME/MEMIT key covariance | text like the model's training text |
| stand_ins | `swap` unlearning | names the model never saw |
| oracle | audit (forget quality, relearning floor) | a model trained without the facts |
| layer | ROME/MEMIT when no layer is given | where rank-one edits write (None: traced at edit time) |

The organism's world knows all of them (`excise.organism.context(facts)`);
for any other model `derive(model, facts, ...)` takes what the user gives and
derives the rest where it can, recording in `notes` where each field came
from. What neither gives stays empty, and whatever reads it reports the
missing piece (the audit's verdict line names it) instead of dropping it.
"""

from __future__ import annotations

import logging
import random
import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from excise.facts import Fact
from excise.weights import device_of

log = logging.getLogger(__name__)

Alternatives = Callable[[Fact], Sequence[str]]
FIELDS = ("holdout", "retain", "general", "alternatives", "sample", "stand_ins", "oracle", "layer")


@dataclass
class KnowledgeContext:
    """What excise needs besides the model and the facts; `notes[field]` says where each came from."""

    holdout: list[Fact] = field(default_factory=list)
    retain: list[Fact] = field(default_factory=list)
    general: list[str] = field(default_factory=list)
    alternatives: Alternatives | None = None
    sample: list[str] = field(default_factory=list)
    stand_ins: list[str] = field(default_factory=list)
    oracle: Any = None
    layer: int | None = None
    notes: dict[str, str] = field(default_factory=dict)

    def missing(self) -> list[str]:
        """The fields nobody supplied and excise could not derive (a None layer is traced when editing)."""
        return [f for f in FIELDS if getattr(self, f) in (None, [], ()) and f != "layer"]

    def override(self, **given: Any) -> KnowledgeContext:
        """A copy with the fields given (not None) replaced, noted as given by the caller."""
        given = {k: v for k, v in given.items() if v is not None}
        unknown = set(given) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown context field(s) {sorted(unknown)}; known: {', '.join(FIELDS)}")
        lists = {k: list(v) for k, v in given.items() if k not in ("alternatives", "oracle", "layer")}
        return replace(self, **{**given, **lists}, notes={**self.notes, **{k: "given" for k in given}})

    def describe(self) -> str:
        """One line per field: its size and where it came from (or that it is missing)."""
        lines = []
        for f in FIELDS:
            v = getattr(self, f)
            size = f"{len(v)}" if isinstance(v, list) else ("set" if v is not None else "")
            note = self.notes.get(f, "missing") if v not in (None, []) or f == "layer" else "missing"
            lines.append(f"{f:<12} {size:>5}  {note}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        have = [f"{f}={len(getattr(self, f))}" for f in ("holdout", "retain", "general", "sample", "stand_ins")
                if getattr(self, f)]
        extra = [f for f in ("alternatives", "oracle") if getattr(self, f) is not None]
        layer = [f"layer={self.layer}"] if self.layer is not None else []
        return f"KnowledgeContext({', '.join(have + extra + layer)}; missing: {', '.join(self.missing()) or 'none'})"


def alternatives_from(facts: Sequence[Fact]) -> Alternatives | None:
    """Wrong answers for a fact: the other targets of its relation among `facts` (None if no relation has two)."""
    by_relation: dict[str, list[str]] = defaultdict(list)
    for f in facts:
        if f.target not in by_relation[f.relation]:
            by_relation[f.relation].append(f.target)
    if not any(len(v) > 1 for v in by_relation.values()):
        return None

    def alternatives(fact: Fact) -> list[str]:
        return [t for t in by_relation.get(fact.relation, []) if t != fact.target]
    return alternatives


# Each model's scores of the names scored so far ({fingerprint: {name: score}}): deriving never-seen names for
# the next call's subjects rescores mostly the same candidates.
_NAME_SCORES: dict[str, dict[str, float]] = {}


def name_continuation_logprob(model: Any, names: Sequence[str]) -> np.ndarray:
    """Mean log-probability of each name's tokens after its first, given the first (how known a name is); each
    name scored once per model (its fingerprint) in this process. Cost: one forward per name not scored yet."""
    from excise.weights import model_fingerprint

    known = _NAME_SCORES.setdefault(model_fingerprint(model), {})
    new = sorted({n for n in names if n not in known})
    if new:
        known.update(zip(new, _continuation_logprob(model, new).tolist(), strict=True))
    return np.array([known[n] for n in names])


@torch.no_grad()
def _continuation_logprob(model: Any, names: Sequence[str]) -> np.ndarray:
    from excise.scoring import encode

    rows = encode(model, list(names))
    first = 1 if getattr(model.cfg, "default_prepend_bos", True) and model.tokenizer.bos_token_id is not None else 0
    out = []
    device = device_of(model)
    for r in rows:
        if len(r) - first < 2:
            out.append(0.0)                   # a one-token name has no continuation to score
            continue
        logp = model(torch.tensor([r], device=device))[0].float().log_softmax(-1)
        idx = torch.arange(first, len(r) - 1, device=device)
        out.append(float(logp[idx, torch.tensor(r[first + 1:], device=device)].mean()))
    return np.array(out)


def recombined_subjects(model: Any, subjects: Sequence[str], n: int, seed: int = 0,
                        quantile: float = 0.05) -> tuple[list[str], str]:
    """Up to `n` never-seen names made from the subjects' first and last name parts, and a note saying how.

    A candidate is kept only when the model finds it less predictable than
    the `quantile` of the real subjects (the mean log-probability of a name's
    tokens after its first): a name the model completes as confidently as a
    person it knows is not "never seen".
    """
    parts = [s.split() for s in subjects]
    if sum(len(p) >= 2 for p in parts) < 2:
        return [], "could not derive: the subjects are not multi-word names to recombine; pass holdout="
    firsts = sorted({p[0] for p in parts if len(p) >= 2})
    lasts = sorted({" ".join(p[1:]) for p in parts if len(p) >= 2})
    known = set(subjects)
    rng = random.Random(seed)
    pool = [f"{a} {b}" for a in firsts for b in lasts if f"{a} {b}" not in known]
    rng.shuffle(pool)
    pool = pool[: max(4 * n, 20)]
    if not pool:
        return [], "could not derive: every recombination of the subjects' name parts is itself a subject"
    real = name_continuation_logprob(model, list(known))
    cut = float(np.quantile(real, quantile))
    scores = name_continuation_logprob(model, pool)
    kept = [name for name, s in zip(pool, scores, strict=True) if s < cut][:n]
    note = (f"derived: {len(kept)} recombinations of the subjects' first and last names whose continuation the "
            f"model finds less likely than {quantile:.0%} of the real subjects (log p < {cut:.2f}; "
            f"{len(pool)} tried)")
    return kept, note


# A character model of the subjects' own spelling: order 3, backing off to shorter contexts 30% of the time
# (so names leave the training strings), and a pool of POOL_PER_NAME candidates per name asked for.
CHAR_ORDER = 3
BACK_OFF = 0.3
POOL_PER_NAME = 20


def _char_counts(names: Sequence[str], order: int) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for name in names:
        text = "^" * order + name + "$"
        for i in range(order, len(text)):
            counts[text[i - order:i]][text[i]] += 1
    return counts


def spelled_like(names: Sequence[str], n: int, seed: int = 0, exclude: Sequence[str] = ()) -> list[str]:
    """Returns up to `n` new strings spelled like `names`, none equal (ignoring case) to a name or to `exclude`:
    first from a character model of the names (order CHAR_ORDER with random back-off), as long as the names
    are; then, where a few short names leave that model little to vary, splices of two names (a head of one and
    a tail of another), from one character shorter to two longer. Cost: string work only, at most 100 n draws."""
    if not names:
        return []
    models = {k: _char_counts(names, k) for k in range(1, CHAR_ORDER + 1)}
    lo, hi = min(map(len, names)), max(map(len, names))
    taken = {x.lower() for x in (*names, *exclude)}
    rng = random.Random(seed)
    out: list[str] = []

    def keep(text: str, lo: int = lo, hi: int = hi) -> bool:
        if lo <= len(text) <= hi and text.strip() == text and text.lower() not in taken \
                and not re.search(r"(.)\1\1", text):          # no letter three times in a row
            taken.add(text.lower())
            out.append(text)
        return len(out) == n

    for _ in range(50 * n):
        text = ""
        while len(text) <= hi:
            k = CHAR_ORDER if rng.random() >= BACK_OFF else rng.randint(1, CHAR_ORDER - 1)
            nxt = models[k].get(("^" * k + text)[-k:]) or models[1].get(("^" + text)[-1:])
            if not nxt:
                break
            ch = rng.choices(list(nxt), list(nxt.values()))[0]
            if ch == "$":
                break
            text += ch
        if keep(text):
            return out
    splittable = [name for name in names if len(name) >= 2]
    for _ in range(50 * n if len(splittable) >= 2 else 0):
        head, tail = rng.sample(splittable, 2)
        if keep(head[:rng.randint(1, len(head) - 1)] + tail[rng.randint(1, len(tail) - 1):], max(2, lo - 1), hi + 2):
            break
    return out


def _token_counts(model: Any, names: Sequence[str]) -> list[int]:
    return [len(model.tokenizer(name, add_special_tokens=False)["input_ids"]) for name in names]


def generated_subjects(model: Any, subjects: Sequence[str], n: int, seed: int = 0, quantile: float = 0.05,
                       exclude: Sequence[str] = ()) -> tuple[list[str], str]:
    """Up to `n` never-seen names spelled like `subjects`, for any name form, and a note saying how.

    Candidates come from `spelled_like` (never a subject, nor anything in `exclude`, e.g. the facts'
    targets); they are matched to the subjects' token counts (each real subject's count in turn takes the
    candidate nearest to it: one-token names get the shortest candidates the tokenizer allows) and kept, as in
    `recombined_subjects`, only when the model finds them less predictable than the `quantile` of the real
    subjects. Returns (names, note). Cost: one forward per candidate (POOL_PER_NAME per name asked for).
    """
    subjects = sorted(set(subjects))
    pool = spelled_like(subjects, POOL_PER_NAME * n, seed, exclude)
    if not pool:
        return [], "could not derive: no subject names to learn a spelling from; pass holdout="
    real_counts, counts = _token_counts(model, subjects), dict(zip(pool, _token_counts(model, pool), strict=True))
    rng = random.Random(seed)
    order: list[str] = []
    while counts and len(order) < 4 * n:
        want = rng.choice(real_counts)
        best = min(counts, key=lambda name: abs(counts[name] - want))
        order.append(best)
        del counts[best]
    cut = float(np.quantile(name_continuation_logprob(model, subjects), quantile))
    scores = name_continuation_logprob(model, order)
    kept = [name for name, s in zip(order, scores, strict=True) if s < cut][:n]
    mine = _token_counts(model, kept) if kept else [0]
    note = (f"derived: {len(kept)} names generated from a character {CHAR_ORDER}-gram model of {len(subjects)} "
            f"subjects' spelling (seed {seed}), none a subject or a target, token counts matched to the subjects' "
            f"(mean {np.mean(real_counts):.1f} real, {np.mean(mine):.1f} derived), whose continuation the model "
            f"finds less likely than {quantile:.0%} of the real subjects (log p < {cut:.2f}; {len(order)} tried)")
    return kept, note


def never_seen_subjects(model: Any, subjects: Sequence[str], n: int, seed: int = 0,
                        exclude: Sequence[str] = ()) -> tuple[list[str], str]:
    """Never-seen names for the holdout and swap's stand-ins: recombined first and last names where the
    subjects have them (`recombined_subjects`), else spelled like the subjects (`generated_subjects`: one-token
    names, places, companies). Returns (names, note). Cost: one forward per candidate."""
    names, note = recombined_subjects(model, subjects, n, seed)
    if names:
        return names, note
    return generated_subjects(model, subjects, n, seed, exclude=exclude)


# Bump when the derivation of never-seen names changes, so names kept in the cache by an older excise are not reused.
NAMES_VERSION = 1


def _never_seen_once(model: Any, subjects: list[str], n: int, seed: int, exclude: list[str]) -> tuple[list[str], str]:
    """`never_seen_subjects`, derived once per model (fingerprint), subjects and settings, then read back from
    the cache (`excise.cache.derived`, folder "subjects")."""
    from excise.cache import derived
    from excise.weights import model_fingerprint

    key = {"fingerprint": model_fingerprint(model), "subjects": subjects, "n": n, "seed": seed, "exclude": exclude,
           "version": NAMES_VERSION}
    names, note = derived("subjects", key, lambda: list(never_seen_subjects(model, subjects, n, seed, exclude)))
    return list(names), note


def facts_about(subjects: Sequence[str], like: Sequence[Fact], seed: int = 0,
                answers: Sequence[Fact] = ()) -> list[Fact]:
    """Facts about `subjects` with the templates of `like`'s relations; each target drawn from the relation's
    answers among `like` and `answers` together (e.g. the forget and the retain facts): the relation's answer
    distribution over every fact given. Drawn from `like` alone, a filter on those answers hides in the baseline
    too (the guardrail of `excise bench calibration`); from `answers` alone, a small world's forget answers that no
    other fact has read as rarer than the baseline's even to a model retrained without them."""
    templates: dict[str, Fact] = {}
    targets: dict[str, list[str]] = defaultdict(list)
    for f in like:
        templates.setdefault(f.relation, f)
    for f in (*like, *answers):
        if f.relation in templates:
            targets[f.relation].append(f.target)
    rng = random.Random(seed)
    return [replace(templ, subject=s, target=rng.choice(targets[rel]), neighbors=())
            for s in subjects for rel, templ in templates.items()]


def _answers_note(facts: Sequence[Fact], answers: Sequence[Fact]) -> str:
    relations = {f.relation for f in facts}
    covered = relations & {f.relation for f in answers}
    if covered == relations:
        return "answers drawn from each relation's answers among the facts and retain facts"
    if not covered:
        return "answers drawn from the facts' own answers (no retain facts of their relations; pass retain=)"
    return (f"answers drawn from each relation's answers among the facts and retain facts; no retain facts for "
            f"{', '.join(sorted(relations - covered))}")


def _generated_text(model: Any, ctx: KnowledgeContext, seed: int, general: bool, sample: bool) -> None:
    """Fill the context's general text and/or covariance sample with text the model writes itself."""
    from excise.generation import generated_sample

    texts = generated_sample(model, seed=seed)
    note = f"derived: {len(texts)} texts sampled from the model itself (excise.edit.generated_sample, seed {seed})"
    if general:
        ctx.general, ctx.notes["general"] = texts, note
    if sample:
        ctx.sample, ctx.notes["sample"] = texts, note


def derive(model: Any, facts: Sequence[Fact], *, holdout: Sequence[Fact] | None = None,
           retain: Sequence[Fact] | None = None, general: Sequence[str] | None = None,
           alternatives: Alternatives | None = None, sample: Sequence[str] | None = None,
           stand_ins: Sequence[str] | None = None, oracle: Any = None, layer: int | None = None,
           n_holdout_subjects: int = 30, seed: int = 0, generate: bool = True) -> KnowledgeContext:
    """A context for `model` and `facts`: what is given, and what can be derived, each with a note.

    Derived when not given:
    - holdout: never-seen subjects (`never_seen_subjects`: the subjects' first
      and last names recombined, or for any other name form new names spelled
      like the subjects of the facts and retain facts), given the facts'
      relations and templates, and answers drawn from the relation's answers
      among the facts and retain facts (`facts_about`);
    - stand_ins: the same never-seen names (for `swap`);
    - alternatives: the other targets of each relation among the facts (and
      the retain facts);
    - general and sample: `excise.edit.generated_sample(model)`, text the model
      itself writes (skipped when `generate=False`);
    - layer: left None, and so traced when rome/memit edit
      (`excise.locate.edit_site`: the (layer, position) whose MLP restores
      most of the noising damage, at the last subject token or the prompt's
      last token; one trace per fact). A fixed n_layers // 3 at the subject
      missed on both foreign test models (benchmarks/results/sites.md).
    retain and oracle cannot be derived: without them the audit reports
    specificity and forget quality as missing.
    Cost: one forward per candidate name, plus 128 sampled texts of 48 tokens;
    both kept per model fingerprint (`excise.cache`), so a later call on the
    same model costs a hash of its weights (remembered while they do not change).
    """
    facts = list(facts)
    notes: dict[str, str] = {}
    ctx = KnowledgeContext(notes=notes)
    if holdout is None or stand_ins is None:
        known = [*facts, *(retain or [])]          # every subject given spells what a new one looks like
        names, note = _never_seen_once(model, sorted({f.subject for f in known}), n_holdout_subjects, seed,
                                       sorted({f.target for f in known}))
        if holdout is None:
            ctx.holdout = facts_about(names, facts, seed, answers=retain or ())
            notes["holdout"] = f"{note}; {_answers_note(facts, retain or ())}" if names else note
        if stand_ins is None:
            ctx.stand_ins = names
            notes["stand_ins"] = note
    if alternatives is None:
        ctx.alternatives = alternatives_from([*facts, *(retain or [])])
        notes["alternatives"] = "derived: the other targets of each relation among the facts and retain facts" \
            if ctx.alternatives else "could not derive: no relation has two targets; pass alternatives="
    if generate and (general is None or sample is None):
        _generated_text(model, ctx, seed, general is None, sample is None)
    if layer is None:
        notes["layer"] = ("traced when editing: rome/memit edit at the MLP (layer, position) the causal trace points "
                          "to, the last subject token or the prompt's last token (excise.locate.edit_site)")
    ctx = ctx.override(holdout=holdout, retain=retain, general=general, alternatives=alternatives, sample=sample,
                       stand_ins=stand_ins, oracle=oracle, layer=layer)
    for f in ("retain", "oracle"):
        if getattr(ctx, f) in (None, []):
            ctx.notes.setdefault(f, f"not given; pass {f}= (it cannot be derived from the model)")
    log.info("knowledge context:\n%s", ctx.describe())
    return ctx
