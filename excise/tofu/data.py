"""TOFU's splits as question/answer records, and as Facts where the question names its author.

TOFU (Maini et al. 2024, MIT) is 200 fictitious authors with 20 question/answer
pairs each, stored author by author. The shipped copy (`excise/tofu/data/`) is
read unless `path=` names another directory with the same files.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from excise.facts import Fact, FactSet

DATA_DIR = Path(__file__).parent / "data"
FILES = {
    "forget01": "forget01_perturbed.json",
    "forget05": "forget05_perturbed.json",
    "forget10": "forget10_perturbed.json",
    "retain90": "retain90.json",
    "retain_perturbed": "retain_perturbed.json",
    "real_authors": "real_authors_perturbed.json",
    "world_facts": "world_facts_perturbed.json",
}
FORGET_SPLITS = ("forget01", "forget05", "forget10")
PER_AUTHOR = 20
PROMPT = "Question: {}\nAnswer:"

# A run of capitalized words, with the name particles TOFU's authors use ("Al-Kuwaiti", "Ben-David").
_NAME = re.compile(r"\b[A-Z][\w\-]+(?:\s+(?:(?:al|el|bin|ibn|van|von|de|da|del|di|le|la)\s+)?[A-Z][\w\-]+)+")


@dataclass(frozen=True)
class QA:
    """One TOFU row; `author` is None where the split is not stored author by author."""

    question: str
    answer: str
    paraphrased_answer: str | None = None
    perturbed_answers: tuple[str, ...] = ()
    paraphrased_question: str | None = None
    author: str | None = None

    @property
    def prompt(self) -> str:
        return PROMPT.format(self.question)


def load(split: str, path: str | Path | None = None) -> list[QA]:
    """The rows of `split` (one of FILES): forget01/05/10, retain90, retain_perturbed, real_authors, world_facts."""
    if split not in FILES:
        raise ValueError(f"unknown TOFU split {split!r}; choose one of {', '.join(FILES)}")
    file = Path(path or DATA_DIR) / FILES[split]
    if not file.exists():
        raise FileNotFoundError(f"no {FILES[split]} in {file.parent}; pass path= a directory holding TOFU's "
                                f"files ({', '.join(FILES.values())}), or omit it for the shipped copy")
    rows = json.loads(file.read_text())
    by_author = split in FORGET_SPLITS or split == "retain90"
    authors = _authors(rows) if by_author else [None] * len(rows)
    return [QA(r["question"], r["answer"], r.get("paraphrased_answer"), tuple(r.get("perturbed_answer", ())),
               r.get("paraphrased_question"), a) for r, a in zip(rows, authors, strict=True)]


def retain_for(forget: str, path: str | Path | None = None) -> list[QA]:
    """What the matching retain model trains on: the full set minus `forget` (TOFU's retain99/95/90)."""
    if forget not in FORGET_SPLITS:
        raise ValueError(f"retain_for takes a forget split ({', '.join(FORGET_SPLITS)}), got {forget!r}")
    gone = {q.question for q in load(forget, path)}
    full = load("forget10", path) + load("retain90", path)
    return [q for q in full if q.question not in gone]


def _authors(rows: Sequence[dict]) -> list[str | None]:
    """Each row's author: the name most rows of its 20-row block mention (None if fewer than 7 of 20 do)."""
    out: list[str | None] = []
    for start in range(0, len(rows), PER_AUTHOR):
        block = rows[start:start + PER_AUTHOR]
        counts: Counter[str] = Counter()
        for r in block:
            names = {re.sub(r"['\u2019]s?$", "", n) for n in _NAME.findall(r["question"] + " " + r["answer"])}
            counts.update(names)
        name, n = counts.most_common(1)[0] if counts else (None, 0)
        out += [name if n >= 0.35 * len(block) else None] * len(block)
    return out


def as_facts(qas: Sequence[QA]) -> FactSet:
    """The rows whose question names their author, as Facts: subject = the author, target = the whole answer.

    The prompt is the question in TOFU's QA format with the author's name as
    the subject slot; the relation is the row's position among its author's
    questions. Rows whose question does not name the author are left out.
    """
    facts, seen = [], Counter()
    for q in qas:
        if q.author is None or q.author not in q.question:
            continue
        seen[q.author] += 1
        template = PROMPT.format(q.question.replace(q.author, "{}", 1))
        paraphrases = ()
        if q.paraphrased_question and q.author in q.paraphrased_question:
            paraphrases = (PROMPT.format(q.paraphrased_question.replace(q.author, "{}", 1)),)
        facts.append(Fact(q.author, f"tofu_q{seen[q.author]}", q.answer, template, paraphrases=paraphrases))
    return FactSet(facts)
