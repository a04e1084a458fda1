"""Facts, fact sets, and how a fact's prompt turns into tokens.

A `Fact` is (subject, relation, target) plus its phrasings: the request prompt
and its paraphrases, questions, completions (the fact asked after an unrelated
sentence about the subject) and held-out templates. Every phrasing is a
template with exactly one `{}` where the subject goes.

`tokenize_prompt` is the one place where text becomes token positions: it
finds the subject's token span inside the prompt and the target's tokens
after it, and refuses (with the fix in the message) when the tokenizer merges
the subject with its neighbours, so that "the last subject token" always
means what it does in ROME.
"""

from __future__ import annotations

import hashlib
import json
import random
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

FAMILIES = ("request", "paraphrase", "question", "completion", "held_out")


@dataclass(frozen=True)
class Fact:
    """One fact and every phrasing of it.

    >>> Fact("Mira Tolvanen", "birthplace", "Veltrana", prompt="{} was born in")
    Fact('Mira Tolvanen' -birthplace-> 'Veltrana', prompt='{} was born in')
    """

    subject: str
    relation: str
    target: str
    prompt: str
    paraphrases: tuple[str, ...] = ()
    questions: tuple[str, ...] = ()
    completions: tuple[str, ...] = ()
    held_out: tuple[str, ...] = ()
    neighbors: tuple[Fact, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("subject", "relation", "target"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"Fact.{name} must be a non-empty string, got {value!r}")
        if self.target != self.target.strip():
            raise ValueError(
                f"Fact.target {self.target!r} has leading or trailing whitespace; "
                "give the bare answer (the space before it is added when tokenizing)"
            )
        for family in FAMILIES:
            for template in self.templates(family):
                if not isinstance(template, str) or template.count("{}") != 1:
                    raise ValueError(
                        f"every {family} template of a Fact needs exactly one '{{}}' where "
                        f"the subject goes, got {template!r} (fact about {self.subject!r}); "
                        f"write it like '{{}} was born in'"
                    )
                if template.rstrip() != template:
                    raise ValueError(
                        f"{family} template {template!r} ends with whitespace; the space "
                        "before the target is added when tokenizing, so drop it"
                    )
        for name in ("paraphrases", "questions", "completions", "held_out", "neighbors"):
            if not isinstance(getattr(self, name), tuple):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def key(self) -> tuple[str, str]:
        """(subject, relation): identifies a fact within a FactSet."""
        return (self.subject, self.relation)

    def templates(self, family: str = "request") -> tuple[str, ...]:
        """The templates of one prompt family (see FAMILIES)."""
        if family == "request":
            return (self.prompt,)
        if family == "paraphrase":
            return self.paraphrases
        if family == "question":
            return self.questions
        if family == "completion":
            return self.completions
        if family == "held_out":
            return self.held_out
        raise ValueError(f"unknown prompt family {family!r}; choose one of {FAMILIES}")

    def prompts(self, family: str = "request") -> list[str]:
        """The family's templates with the subject filled in."""
        return [self.fill(t) for t in self.templates(family)]

    def fill(self, template: str) -> str:
        return template.replace("{}", self.subject)

    @property
    def text(self) -> str:
        """The request prompt followed by the target: the fact as a sentence."""
        return f"{self.fill(self.prompt)} {self.target}"

    def with_neighbors(self, neighbors: Sequence[Fact]) -> Fact:
        return replace(self, neighbors=tuple(neighbors))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["neighbors"] = [n.to_dict() | {"neighbors": []} for n in self.neighbors]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fact:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown Fact field(s) {sorted(unknown)}; known fields: {sorted(known)}")
        missing = {"subject", "relation", "target", "prompt"} - set(d)
        if missing:
            raise ValueError(f"Fact is missing required field(s) {sorted(missing)}")
        for name in ("subject", "relation", "target", "prompt"):
            if not isinstance(d[name], str):
                raise ValueError(f"Fact.{name} must be a string, got {d[name]!r}")
        d = dict(d)
        d["neighbors"] = tuple(cls.from_dict(n) for n in d.get("neighbors", ()))
        for name in ("paraphrases", "questions", "completions", "held_out"):
            value = d.get(name, ())
            if isinstance(value, str):
                raise ValueError(f"Fact.{name} must be a list of templates, got the string {value!r}")
            d[name] = tuple(value)
        return cls(**d)

    def _repr_html_(self) -> str:
        """The notebook view: the fact as a sentence, then each prompt family's prompts filled in."""
        from excise import display as d

        rows = [[fam, i + 1, self.fill(t)] for fam in FAMILIES for i, t in enumerate(self.templates(fam))]
        foot = f"<p>{len(self.neighbors)} neighbour facts attached</p>" if self.neighbors else ""
        return (d.heading(f"{self.subject!r} -{self.relation}-> {self.target!r}")
                + d.table(["family", "#", "prompt (the target follows)"], rows) + foot)

    def __repr__(self) -> str:
        return (f"Fact({self.subject!r} -{self.relation}-> {self.target!r}, "
                f"prompt={self.prompt!r})")


class FactSet(Sequence[Fact]):
    """An ordered collection of facts with lookup by (subject, relation)."""

    def __init__(self, facts: Iterable[Fact]):
        self._facts: list[Fact] = list(facts)
        self._index: dict[tuple[str, str], int] = {}
        for i, f in enumerate(self._facts):
            if not isinstance(f, Fact):
                raise TypeError(f"FactSet holds Facts, got {type(f).__name__} at position {i}")
            if f.key in self._index:
                raise ValueError(f"two facts share subject {f.subject!r} and relation {f.relation!r}")
            self._index[f.key] = i

    # -- sequence protocol ------------------------------------------------
    def __len__(self) -> int:
        return len(self._facts)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return FactSet(self._facts[i])
        return self._facts[i]

    def __iter__(self) -> Iterator[Fact]:
        return iter(self._facts)

    def __contains__(self, fact: object) -> bool:
        return isinstance(fact, Fact) and self._index.get(fact.key) is not None \
            and self._facts[self._index[fact.key]] == fact

    # -- lookups ----------------------------------------------------------
    @property
    def subjects(self) -> list[str]:
        return list(dict.fromkeys(f.subject for f in self._facts))

    @property
    def relation_names(self) -> list[str]:
        return list(dict.fromkeys(f.relation for f in self._facts))

    def check_subject(self, subject: str, where: str = "a subject of these facts") -> str:
        """`subject` if this set has facts about it, else a ValueError naming the closest subjects."""
        import difflib

        if subject in set(self.subjects):
            return subject
        close = difflib.get_close_matches(subject, self.subjects, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else \
            f"; e.g. {self.subjects[0]!r} ({len(self.subjects)} subjects in all)"
        raise ValueError(f"{subject!r} is not {where}{hint}")

    def fact(self, subject: str, relation: str) -> Fact:
        i = self._index.get((subject, relation))
        if i is None:
            if subject not in set(self.subjects):
                raise KeyError(f"no subject {subject!r} in this FactSet "
                               f"(e.g. {', '.join(map(repr, self.subjects[:3]))})")
            raise KeyError(f"{subject!r} has no {relation!r} fact; relations: {self.relation_names}")
        return self._facts[i]

    def of_subject(self, subject: str) -> FactSet:
        return FactSet(f for f in self._facts if f.subject == subject)

    def filter(self, predicate) -> FactSet:
        return FactSet(f for f in self._facts if predicate(f))

    def _known(self, fact: Fact) -> Fact:
        i = self._index.get(fact.key)
        if i is None:
            raise KeyError(f"{fact!r} is not in this FactSet")
        return self._facts[i]

    def neighbors(self, fact: Fact) -> FactSet:
        """Facts that must survive deleting `fact` (as attached to it)."""
        return FactSet(self._known(fact).neighbors)

    def retain_set(self, forget: Fact | Iterable[Fact], n: int | None = None, seed: int = 0) -> FactSet:
        """Every fact not in `forget` (a seeded sample of `n` of them if given)."""
        forget = [forget] if isinstance(forget, Fact) else list(forget)
        keys = {f.key for f in forget}
        rest = [f for f in self._facts if f.key not in keys]
        if n is not None:
            if n < 0:
                raise ValueError(f"n must be >= 0, got {n}")
            rest = random.Random(seed).sample(rest, min(n, len(rest)))
        return FactSet(rest)

    def subjects_split(self, fraction: float, seed: int = 0) -> tuple[FactSet, FactSet]:
        """TOFU-style split: (all facts of `fraction` of the subjects, the rest)."""
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), e.g. 0.05 for a 5% split; got {fraction}")
        subjects = self.subjects
        k = max(1, round(fraction * len(subjects)))
        chosen = set(random.Random(seed).sample(subjects, k))
        forget = FactSet(f for f in self._facts if f.subject in chosen)
        retain = FactSet(f for f in self._facts if f.subject not in chosen)
        return forget, retain

    def sample(self, n: int, seed: int = 0) -> FactSet:
        return FactSet(random.Random(seed).sample(self._facts, min(n, len(self._facts))))

    # -- persistence (save/load: files; to_json/from_json: text) ----------
    def to_json(self) -> str:
        return json.dumps([f.to_dict() for f in self._facts], indent=1)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path, lookup: Any = None) -> FactSet:
        """Facts from a JSON file: a list of Fact objects (see `from_json`); errors name the file and line."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no facts file at {path}: a facts file is a JSON list of facts "
                                    "(subject, relation, target, prompt; README 'Facts')")
        return cls._parse(path.read_text(), str(path), lookup)

    @classmethod
    def from_json(cls, text: str, lookup: Any = None) -> FactSet:
        """Facts from JSON text: a list of Fact objects (a file: `FactSet.load(path)`).

        `lookup(entry) -> list[Fact] | None` may resolve short entries (the
        organism's world resolves {"subject", "relation"} or {"subject"}).
        Errors name the line of the bad fact and the field.
        """
        return cls._parse(json_text(text, "FactSet"), "facts JSON", lookup)

    @classmethod
    def _parse(cls, text: str, name: str, lookup: Any) -> FactSet:
        facts: list[Fact] = []
        for i, (entry, line) in enumerate(_entries(text, name)):
            where = f"{name} line {line} (fact #{i})"
            if not isinstance(entry, dict):
                raise ValueError(f"{where}: a fact is a JSON object with subject, relation, target and prompt, "
                                 f"got {type(entry).__name__}")
            try:
                found = lookup(entry) if lookup is not None else None
                facts.extend(found if found is not None else [Fact.from_dict(entry)])
            except (ValueError, TypeError, KeyError) as e:
                raise ValueError(f"{where}: {e}") from None
        if not facts:
            raise ValueError(f"{name} holds no facts")
        return cls(facts)

    def _repr_html_(self) -> str:
        """The notebook view: a row per fact (the first 20), with its request prompt filled in."""
        from excise import display as d

        return (d.heading(f"FactSet: {len(self)} facts, {len(self.subjects)} subjects, "
                          f"relations {', '.join(self.relation_names)}")
                + d.table(["subject", "relation", "target", "request prompt"],
                          [[f.subject, f.relation, f.target, f.fill(f.prompt)] for f in self._facts]))

    def __repr__(self) -> str:
        return (f"FactSet({len(self)} facts, {len(self.subjects)} subjects, "
                f"relations={self.relation_names})")


def json_text(text: Any, cls: str) -> str:
    """`text` if it is JSON text (an object or a list); a path gets an error that names `cls.load`."""
    if isinstance(text, Path) or not str(text).lstrip().startswith(("{", "[")):
        raise ValueError(f"{cls}.from_json takes JSON text, got {str(text)[:60]!r}: for a file, use "
                         f"{cls}.load(path)")
    return str(text)


def _entries(text: str, name: str) -> list[tuple[Any, int]]:
    """The elements of a top-level JSON list, each with the line it starts on."""
    decoder = json.JSONDecoder()

    def line(i: int) -> int:
        return text.count("\n", 0, i) + 1

    def skip(i: int) -> int:
        while i < len(text) and text[i].isspace():
            i += 1
        return i

    def fail(i: int, msg: str) -> ValueError:
        return ValueError(f"{name} line {line(i)}: {msg}")

    i = skip(0)
    if i >= len(text) or text[i] != "[":
        raise fail(i, "a facts file is a JSON list of facts: [{\"subject\": ..., \"relation\": ..., "
                      "\"target\": ..., \"prompt\": \"{} was born in\"}, ...]")
    out: list[tuple[Any, int]] = []
    i = skip(i + 1)
    if i < len(text) and text[i] == "]":
        return out
    while True:
        try:
            value, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name} line {e.lineno} column {e.colno}: invalid JSON ({e.msg})") from None
        out.append((value, line(i)))
        i = skip(end)
        if i < len(text) and text[i] == ",":
            i = skip(i + 1)
        elif i < len(text) and text[i] == "]":
            if skip(i + 1) < len(text):
                raise fail(skip(i + 1), "unexpected text after the list of facts")
            return out
        else:
            raise fail(i, "expected ',' or ']' after a fact")


# ---------------------------------------------------------------------------
# Tokenization
# ---------------------------------------------------------------------------

@runtime_checkable
class Tokenizes(Protocol):
    """What tokenization needs from a model: TransformerBridge has it."""

    def to_tokens(self, input: str, prepend_bos: bool | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class PromptTokens:
    """A filled-in prompt as tokens, with where the subject sits and what the target is."""

    text: str
    tokens: torch.Tensor            # [pos], BOS included when the model prepends one
    subject: tuple[int, int]        # [start, end) token positions of the subject
    target_ids: tuple[int, ...]     # the target's tokens as they follow the prompt

    @property
    def last_subject(self) -> int:
        return self.subject[1] - 1

    @property
    def subject_positions(self) -> range:
        return range(*self.subject)


# tokenizer -> {(text, bos, the model's default_prepend_bos, n_ctx): ids}: an audit tokenizes the same prompts
# tens of thousands of times (61,156 calls, 10 of 106 s in a 90-fact audit of two models, measured)
_TOKEN_CACHE: dict[Any, dict[tuple[str, bool, bool, Any], tuple[int, ...]]] = {}
_TOKEN_CACHE_SIZE = 200_000     # strings per tokenizer kept before the cache starts over


# tokenizer -> what identifies its behaviour: a hash of a fast tokenizer's whole definition (so a model's copy, or
# an oracle loaded with the same tokenizer, shares the caches below), else the object itself
_TOKENIZER_KEYS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _tokenizer_key(tokenizer: Any) -> Any:
    """What the token caches are keyed by for `tokenizer` (None: do not cache)."""
    if tokenizer is None:
        return None
    try:
        if tokenizer in _TOKENIZER_KEYS:
            return _TOKENIZER_KEYS[tokenizer]
    except TypeError:               # a tokenizer that cannot be weakly referenced: no cache
        return None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    key: Any = tokenizer
    if backend is not None:
        spec = backend.to_str() + repr(sorted(getattr(tokenizer, "init_kwargs", {}).items(), key=str))
        key = hashlib.sha256(spec.encode()).hexdigest()
    _TOKENIZER_KEYS[tokenizer] = key
    return key


def _cache_for(store: dict, model: Tokenizes) -> dict | None:
    key = _tokenizer_key(getattr(model, "tokenizer", None))
    return None if key is None else store.setdefault(key, {})


def _ids(model: Tokenizes, text: str, bos: bool = True) -> list[int]:
    default_bos = bool(getattr(getattr(model, "cfg", None), "default_prepend_bos", True))
    if not text:
        bos_id = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
        return [bos_id] if bos and default_bos and bos_id is not None else []
    cache = _cache_for(_TOKEN_CACHE, model)
    key = (text, bos, default_bos, getattr(getattr(model, "cfg", None), "n_ctx", None))
    if cache is not None and key in cache:
        return list(cache[key])
    ids = model.to_tokens(text, prepend_bos=None if bos else False)[0].tolist()
    if cache is not None:
        if len(cache) >= _TOKEN_CACHE_SIZE:
            cache.clear()
        cache[key] = tuple(ids)
    return ids


# tokenizer -> {(template, subject, target, default_prepend_bos, n_ctx): PromptTokens}: an audit's truth ratios
# tokenize every retain fact under every wrong answer, again for each model (41,430 calls, 14 of 104 s in the
# quick unlearning table, measured); each call after the first costs a lookup and a copy of the token tensor.
_PROMPT_CACHE: dict[Any, dict[tuple, PromptTokens]] = {}


def tokenize_prompt(model: Tokenizes, fact: Fact, template: str | None = None) -> PromptTokens:
    """Tokenize `fact` under `template` (default: its request prompt); see `_tokenize_prompt`. Each (template,
    subject, target) is tokenized once per tokenizer and model settings. Cost: five tokenizer calls the first
    time, a dictionary lookup after."""
    template = fact.prompt if template is None else template
    cfg = getattr(model, "cfg", None)
    key = (template, fact.subject, fact.target, bool(getattr(cfg, "default_prepend_bos", True)),
           getattr(cfg, "n_ctx", None))
    cache = _cache_for(_PROMPT_CACHE, model)
    if cache is not None and key in cache:
        kept = cache[key]
        return replace(kept, tokens=kept.tokens.clone())
    pt = _tokenize_prompt(model, fact, template)
    if cache is not None:
        if len(cache) >= _TOKEN_CACHE_SIZE:
            cache.clear()
        cache[key] = replace(pt, tokens=pt.tokens.clone())
    return pt


def _tokenize_prompt(model: Tokenizes, fact: Fact, template: str) -> PromptTokens:
    """Tokenize `fact` under `template`.

    The subject span is what tokenizing the text through the subject adds to
    tokenizing the text before it (its trailing space moved onto the
    subject, as a tokenizer attaches it). The span must equal the subject's
    tokens alone (with the same leading space), and the text after the
    subject must not merge into it; otherwise there is no subject span to
    speak of and this raises, naming the fix.
    """
    if template.count("{}") != 1:
        raise ValueError(f"template {template!r} needs exactly one '{{}}' for the subject")
    before, after = template.split("{}")
    stem = before.rstrip()
    lead = before[len(stem):]
    text = before + fact.subject + after
    prefix = _ids(model, stem)
    through = _ids(model, before + fact.subject)
    full = _ids(model, text)
    alone = _ids(model, lead + fact.subject, bos=False)
    if lead and alone != through[len(prefix):]:
        # SentencePiece tokenizers (Llama's) prefix a word-start marker themselves, so a
        # leading space tokenizes as an extra marker: the subject alone is then its bare text.
        alone = _ids(model, fact.subject, bos=False)
    span = through[len(prefix):]
    if through[: len(prefix)] != prefix or span != alone or full[: len(through)] != through:
        raise ValueError(
            f"subject {fact.subject!r} tokenizes to {alone} alone but not as that span inside "
            f"the prompt {text!r} (tokens {full}): the tokenizer merges it with the text "
            "around it. Put a space (or punctuation) between the subject and its "
            "neighbours in the template."
        )
    with_target = _ids(model, f"{text} {fact.target}")
    if with_target[: len(full)] != full or len(with_target) == len(full):
        raise ValueError(
            f"target {fact.target!r} does not tokenize as a separate span after the prompt "
            f"{text!r}: the prompt's last token merges with the answer. End the template "
            "with a complete word."
        )
    return PromptTokens(
        text=text,
        tokens=torch.tensor(full, dtype=torch.long),
        subject=(len(prefix), len(through)),
        target_ids=tuple(with_target[len(full):]),
    )


# ---------------------------------------------------------------------------
# Discovery: the facts a real model actually knows
# ---------------------------------------------------------------------------

@torch.no_grad()
def discover(model: Any, candidates: Iterable[dict[str, Any]], min_prob: float = 0.5,
             max_tokens: int = 8) -> tuple[FactSet, list[dict[str, Any]]]:
    """Facts `model` completes with confidence, found by asking it.

    Each candidate is a fact without a target: {"subject", "relation", "prompt"}
    (plus optional phrasings such as "paraphrases"). The model greedily
    continues the prompt until its first word ends (at most `max_tokens`
    tokens); that word becomes the target, and the candidate is kept when the
    target's first token (what recall scores) has probability >= `min_prob`.
    Returns the kept facts and one row per candidate saying what the model
    predicted, with what probability, and why a candidate was dropped.
    """
    rows: list[dict[str, Any]] = []
    kept: list[Fact] = []
    for cand in candidates:
        cand = dict(cand)
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in cand.items() if k != "target"}
        probe = Fact(**{**fields, "target": "?"})
        row = {"subject": probe.subject, "relation": probe.relation, "prompt": probe.fill(probe.prompt)}
        rows.append(row)
        tokens = tokenize_prompt(model, probe).tokens[None].to(model.cfg.device)
        first = model(tokens)[0, -1].float().softmax(-1)
        generated = [int(first.argmax())]
        while not _word_ended(continuation := model.tokenizer.decode(generated)) and len(generated) < max_tokens:
            tokens = torch.cat([tokens, torch.tensor([[generated[-1]]], device=tokens.device)], dim=1)
            generated.append(int(model(tokens)[0, -1].argmax()))
        text = continuation.lstrip()
        word = text[: next((i for i, ch in enumerate(text) if not ch.isalnum()), len(text))]
        row.update(predicted=continuation, target=word, prob=float(first[generated[0]]))
        if not word:
            row["dropped"] = "the continuation does not start with a word"
            continue
        if not _word_ended(continuation):
            row["dropped"] = f"the word {word!r}... does not end within {max_tokens} tokens"
            continue
        fact = replace(probe, target=word)
        if tokenize_prompt(model, fact).target_ids[0] != generated[0]:
            row["dropped"] = f"{word!r} after a space tokenizes differently from the model's continuation"
            continue
        if row["prob"] < min_prob:
            row["dropped"] = f"first-token probability {row['prob']:.2f} < {min_prob}"
            continue
        if fact.key in {f.key for f in kept}:
            row["dropped"] = "a kept candidate has the same subject and relation"
            continue
        kept.append(fact)
    return FactSet(kept), rows


def _word_ended(continuation: str) -> bool:
    """Whether the text after the first word's start shows where that word ends."""
    text = continuation.lstrip()
    return any(not ch.isalnum() for ch in text) or (bool(continuation) and not text)
