"""Recall: the one definition of "the model knows this fact", used everywhere.

A fact is *recalled* under a prompt when the target's first token is the
model's top-1 next token after the prompt. `score_prompts` computes, batched,
the target's rank and log-probability for many prompts at once;
`recall_table` aggregates that per prompt family and relation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from excise.facts import FAMILIES, Fact, tokenize_prompt
from excise.weights import device_of


def encode(model: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, exactly as `model.to_tokens(text)[0]` gives them.

    One batched tokenizer call instead of one `to_tokens` per text; BOS is
    prepended when the model's config says to.
    """
    tok = model.tokenizer
    ids = tok(list(texts), add_special_tokens=False)["input_ids"]
    if getattr(model.cfg, "default_prepend_bos", True) and tok.bos_token_id is not None:
        ids = [[tok.bos_token_id, *row] for row in ids]
    return ids


def target_first_ids(model: Any, prompts: Sequence[str], targets: Sequence[str]) -> list[int]:
    """The first token of each target as it follows its prompt (after a space)."""
    before = encode(model, prompts)
    after = encode(model, [f"{p} {t}" for p, t in zip(prompts, targets, strict=True)])
    out = []
    for p, b, a in zip(prompts, before, after, strict=True):
        if a[: len(b)] != b or len(a) == len(b):
            raise ValueError(f"the target after prompt {p!r} merges with the prompt's last token; "
                             "end the template with a complete word")
        out.append(a[len(b)])
    return out


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Int[Tensor, "b pos"], Int[Tensor, " b"]]:
    """Right-pad token rows; returns the batch and each row's last real position."""
    width = max(len(r) for r in rows)
    batch = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        batch[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return batch, torch.tensor([len(r) - 1 for r in rows], dtype=torch.long)


@torch.no_grad()
def rank_prompts(
    model: Any, prompts: Sequence[str], target_ids: Sequence[int], top_k: int = 1, batch_size: int = 256,
) -> tuple[Int[Tensor, " n"], Float[Tensor, " n"], Int[Tensor, "n k"]]:
    """Rank (0 = top-1) and log-probability of each target after its prompt, and the top-k tokens.

    Cost: ceil(n / batch_size) forwards. Right padding is safe for a causal
    model: the logits at each prompt's last real position never see the pad.
    """
    rows = encode(model, prompts)
    pad = model.tokenizer.pad_token_id or 0
    ranks, logps, tops = [], [], []
    device = device_of(model)
    for start in range(0, len(rows), batch_size):
        tokens, last = pad_batch(rows[start:start + batch_size], pad)
        logits = model(tokens.to(device))[torch.arange(len(last)), last.to(device)].float()
        logprobs = logits.log_softmax(-1)
        tgt = torch.tensor(target_ids[start:start + batch_size], device=device)
        tgt_logp = logprobs.gather(1, tgt[:, None])[:, 0]
        ranks.append((logprobs > tgt_logp[:, None]).sum(-1).cpu())
        logps.append(tgt_logp.cpu())
        tops.append(logprobs.topk(top_k, dim=-1).indices.cpu())
    return torch.cat(ranks), torch.cat(logps), torch.cat(tops)


def score_prompts(
    model: Any, prompts: Sequence[str], target_ids: Sequence[int], batch_size: int = 256,
) -> tuple[Int[Tensor, " n"], Float[Tensor, " n"], Int[Tensor, " n"]]:
    """Rank (0 = top-1), log-probability and top-1 token of each target after its prompt."""
    ranks, logps, tops = rank_prompts(model, prompts, target_ids, 1, batch_size)
    return ranks, logps, tops[:, 0]


@dataclass
class RecallTable:
    """Recall per prompt family and relation; `rows` keep every probe for inspection."""

    rows: list[dict[str, Any]] = field(repr=False)

    def rate(self, family: str | None = None, relation: str | None = None) -> float:
        sel = [r for r in self.rows if (family is None or r["family"] == family)
               and (relation is None or r["relation"] == relation)]
        if not sel:
            raise ValueError(f"no probes for family={family!r} relation={relation!r}")
        return sum(r["recalled"] for r in sel) / len(sel)

    @property
    def families(self) -> list[str]:
        return list(dict.fromkeys(r["family"] for r in self.rows))

    @property
    def relations(self) -> list[str]:
        return list(dict.fromkeys(r["relation"] for r in self.rows))

    def to_dict(self) -> dict[str, Any]:
        return {
            "overall": {fam: self.rate(fam) for fam in self.families},
            "n_probes": {fam: sum(r["family"] == fam for r in self.rows) for fam in self.families},
            "by_relation": {rel: {fam: self.rate(fam, rel) for fam in self.families}
                            for rel in self.relations},
        }

    def to_markdown(self) -> str:
        fams = self.families
        lines = ["| relation | " + " | ".join(fams) + " |", "|---" * (len(fams) + 1) + "|"]
        for rel in self.relations:
            lines.append(f"| {rel} | " + " | ".join(f"{self.rate(f, rel):.3f}" for f in fams) + " |")
        lines.append("| **all** | " + " | ".join(f"**{self.rate(f):.3f}**" for f in fams) + " |")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The notebook view: overall recall per family first, then a row per relation."""
        from excise import display as d

        fams = self.families
        overall = ", ".join(f"{f} {self.rate(f):.3f}" for f in fams)
        rows = [[rel, *(self.rate(f, rel) for f in fams)] for rel in self.relations]
        return (d.heading(f"recall (target's first token top-1): {overall}")
                + d.table(["relation", *fams], rows + [["all", *(self.rate(f) for f in fams)]], max_rows=1000)
                + f"<p>{len(self.rows)} probes of {len({(r['subject'], r['relation']) for r in self.rows})} facts</p>")

    def __repr__(self) -> str:
        rates = ", ".join(f"{f}={self.rate(f):.3f}" for f in self.families)
        return f"RecallTable({len(self.rows)} probes: {rates})"


def recall_table(
    model: Any, facts: Iterable[Fact], families: Sequence[str] = FAMILIES, batch_size: int = 256,
) -> RecallTable:
    """Probe every fact under every template of `families`; top-1 first-token recall."""
    probes = [(f, fam, t) for f in facts for fam in families for t in f.templates(fam)]
    if not probes:
        raise ValueError("recall_table needs at least one fact with a template in "
                         f"families {tuple(families)}")
    prompts = [f.fill(t) for f, _, t in probes]
    tids = target_first_ids(model, prompts, [f.target for f, _, _ in probes])
    ranks, logps, tops = score_prompts(model, prompts, tids, batch_size)
    decode = model.tokenizer.decode
    rows = [
        {"subject": f.subject, "relation": f.relation, "family": fam, "template": t,
         "target": f.target, "rank": int(rk), "logprob": float(lp), "top1": decode([int(tp)]),
         "recalled": bool(rk == 0)}
        for (f, fam, t), rk, lp, tp in zip(probes, ranks, logps, tops, strict=True)
    ]
    return RecallTable(rows)


@dataclass(frozen=True)
class Example:
    """A prompt followed by its answer, as model input: `ids` = prompt + answer[:-1]."""

    ids: tuple[int, ...]
    start: int                     # position of the first answer token in prompt + answer
    answer: tuple[int, ...]


def answer_examples(model: Any, facts: Iterable[Fact], families: Sequence[str] = ("request",),
                    answers: dict[tuple[str, str], str] | None = None) -> list[Example]:
    """One Example per fact and template of `families`; `answers` overrides a fact's target."""
    out = []
    for f in facts:
        if answers is not None:
            f = Fact(f.subject, f.relation, answers[f.key], f.prompt, f.paraphrases, f.questions,
                     f.completions, f.held_out)
        for fam in families:
            for template in f.templates(fam):
                pt = tokenize_prompt(model, f, template)
                prompt = pt.tokens.tolist()
                out.append(Example(tuple(prompt + list(pt.target_ids[:-1])), len(prompt), pt.target_ids))
    return out


def answer_logprobs(model: Any, examples: Sequence[Example]) -> Float[Tensor, " n"]:
    """Sum of log p(answer token) per example, in one padded forward (with grad if enabled)."""
    device = device_of(model)
    ids, _ = pad_batch([e.ids for e in examples], model.tokenizer.pad_token_id or 0)
    logp = model(ids.to(device)).float().log_softmax(-1)
    rows, cols, tgts, owner = [], [], [], []
    for i, e in enumerate(examples):
        n = len(e.answer)
        rows += [i] * n
        cols += list(range(e.start - 1, e.start - 1 + n))
        tgts += list(e.answer)
        owner += [i] * n
    picked = logp[torch.tensor(rows, device=device), torch.tensor(cols, device=device),
                  torch.tensor(tgts, device=device)]
    return torch.zeros(len(examples), device=device).index_add(0, torch.tensor(owner, device=device), picked)


@torch.no_grad()
def sequence_logprobs(model: Any, examples: Sequence[Example], batch_size: int = 64) -> Float[Tensor, " n"]:
    """`answer_logprobs` without gradients, in chunks of `batch_size` rows (on the CPU)."""
    if not examples:
        return torch.zeros(0)
    return torch.cat([answer_logprobs(model, examples[i:i + batch_size]).cpu()
                      for i in range(0, len(examples), batch_size)])


def mean_token_logprobs(model: Any, examples: Sequence[Example]) -> Float[Tensor, " n"]:
    """Per example, the mean log-probability of its answer's tokens (float64): -L of TOFU's loss, and
    exp of it TOFU's Prob."""
    lengths = torch.tensor([len(e.answer) for e in examples], dtype=torch.float64)
    return sequence_logprobs(model, examples).double() / lengths


def recalled(model: Any, facts: Sequence[Fact]) -> list[bool]:
    """Per fact: recalled (top-1) under its request prompt."""
    if not facts:
        return []
    return [r["recalled"] for r in recall_table(model, facts, ("request",)).rows]


@torch.no_grad()
def general_loss(model: Any, texts: Sequence[str], batch_size: int = 64) -> float:
    """Mean next-token loss (nats per token) over `texts`."""
    if not texts:
        raise ValueError("general_loss needs at least one text")
    rows = encode(model, texts)
    pad = model.tokenizer.pad_token_id or 0
    device = device_of(model)
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        tokens, last = pad_batch(rows[start:start + batch_size], pad)
        tokens = tokens.to(device)
        logp = model(tokens).float().log_softmax(-1)[:, :-1]
        tok = logp.gather(-1, tokens[:, 1:, None])[..., 0]
        mask = torch.arange(tok.shape[1], device=device)[None] < last.to(device)[:, None]
        total += float(-(tok * mask).sum())
        count += int(mask.sum())
    return total / count
