"""How deep a deletion went, by activation patching: the Unlearning Depth Score (UDS; Lee, Kim and Jo 2026).

Output-level attacks ask the model; UDS asks its hidden states. The unedited
("full") model is run on each forget prompt followed by its answer, teacher
forced, and scored by the mean log-probability of the answer's tokens. Then,
one block at a time, the residual stream after that block at the positions
that predict the answer (the prompt's last token and the answer's tokens but
the last) is overwritten with another model's, run on the same tokens, and
the score drops by some delta:

- stage 1, the retrain oracle's states (a model that never knew the fact):
  delta1 per layer; layers with delta1 > tau (0.05) are the ones that encode
  the fact ("knowledge-encoding" layers);
- stage 2, the audited model's states: delta2 per layer.

A fact's UDS is the delta1-weighted mean over its knowledge-encoding layers
of clip(delta2 / delta1, 0, 1): 1 when every such layer of the audited model
has lost what the oracle lacks, 0 when the full model reads the fact back out
of the audited model's states as out of its own. A fact with no
knowledge-encoding layer has none; the model's UDS is the mean over the facts
that have one.

As the authors' code computes it (gnueaj/unlearning-depth-score at fc31639,
compute_uds.py: `build_logprob_ctx`, the batched log-prob patching, the
S1/S2 aggregation; tau 0.05; every layer; patch scope "span" with the
entity = the whole answer, as excise's answers are the entity). Where excise
differs: the prompt is the fact's request prompt rather than a chat-formatted
TOFU question with an answer prefix, the hooks are TransformerLens's
`blocks.{l}.hook_resid_post` (Hugging Face's hidden_states[l + 1]), and the
model score over facts is reported missing, not 0, when no fact has a
knowledge-encoding layer (theirs averages an empty list to 0).

By construction the oracle's UDS is 1 and the unedited model's 0: the score
places a model between them and has no two-sided verdict against never-seen
facts (which no model knows, so none of their layers encode them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from excise.scoring import pad_batch
from excise.weights import device_of

TAU = 0.05          # the authors' delta threshold for a knowledge-encoding layer (compute_uds.py --delta_threshold)


@dataclass
class DepthResult:
    """Per fact: the full model's score, and per layer the drops when the oracle's (delta1) and the audited
    model's (delta2) states are patched in; `uds[i]` is None for a fact with no knowledge-encoding layer."""

    full: list[float]
    delta1: list[list[float]]           # [fact][layer]
    delta2: list[list[float]]
    uds: list[float | None]
    tau: float = TAU

    @property
    def score(self) -> float | None:
        """The model's UDS: the mean over the facts that have one (None if none has)."""
        have = [u for u in self.uds if u is not None]
        return sum(have) / len(have) if have else None

    def profile(self) -> list[float]:
        """Per layer, over the facts with a UDS: the share of the oracle's drop the audited model's states
        reproduce, clip(sum delta2 / sum delta1, 0, 1) over the facts where that layer encodes the fact
        (NaN where it encodes none): where the fact is gone (1) and where the full model still finds it (0)."""
        out = []
        for layer in range(len(self.delta1[0]) if self.delta1 else 0):
            encoding = [(a[layer], b[layer]) for a, b in zip(self.delta1, self.delta2, strict=True)
                        if a[layer] > self.tau]
            total1, total2 = sum(a for a, _ in encoding), sum(b for _, b in encoding)
            out.append(min(max(total2 / total1, 0.0), 1.0) if encoding else float("nan"))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "uds": self.uds, "profile": self.profile(), "full": self.full,
                "delta1": self.delta1, "delta2": self.delta2, "tau": self.tau}


def fact_uds(delta1: Sequence[float], delta2: Sequence[float], tau: float = TAU) -> float | None:
    """One fact's UDS from its per-layer drops (None when no layer's delta1 exceeds tau)."""
    num = den = 0.0
    for d1, d2 in zip(delta1, delta2, strict=True):
        if d1 > tau:
            den += d1
            num += d1 * min(max(d2 / d1, 0.0), 1.0)
    return num / den if den > 0 else None


def _score(logits: torch.Tensor, tokens: torch.Tensor, spans: list[tuple[int, int]]) -> list[float]:
    logp = logits.float().log_softmax(-1)
    out = []
    for i, (s, e) in enumerate(spans):
        pos = torch.arange(s, e, device=logits.device)
        out.append(float(logp[i, pos, tokens[i, pos + 1]].mean()))
    return out


@torch.no_grad()
def unlearning_depth(full: Any, model: Any, oracle: Any, rows: Sequence[Sequence[int]], n_answer: Sequence[int],
                     tau: float = TAU, batch_size: int = 32) -> DepthResult:
    """UDS of `model` (the audited one) against `oracle`, read through `full` (the unedited model), on token rows
    that end in `n_answer[i]` answer tokens after the prompt (`excise.verify.membership.answer_rows`).

    Cost: per batch, one forward of each of the three models plus 2 x n_layers patched forwards of `full`.
    """
    n_layers = full.cfg.n_layers
    for role, m in (("audited", model), ("oracle", oracle)):
        if m.cfg.n_layers != n_layers or m.cfg.d_model != full.cfg.d_model:
            raise ValueError(f"UDS patches the {role} model's residual stream into the unedited model's, so they "
                             f"need the same shape: {m.cfg.n_layers} layers x {m.cfg.d_model} vs "
                             f"{n_layers} x {full.cfg.d_model}")
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]
    pad = full.tokenizer.pad_token_id or 0
    device = device_of(full)
    out = DepthResult([], [], [], [], tau)
    for start in range(0, len(rows), batch_size):
        chunk, answers = [list(r) for r in rows[start:start + batch_size]], n_answer[start:start + batch_size]
        for r, a in zip(chunk, answers, strict=True):
            if not 0 < a < len(r):
                raise ValueError(f"a row of {len(r)} tokens cannot end in {a} answer tokens after a prompt")
        tokens = pad_batch(chunk, pad)[0].to(device)
        # positions whose logits predict the answer: the prompt's last token .. the answer's second to last
        spans = [(len(r) - a - 1, len(r) - 1) for r, a in zip(chunk, answers, strict=True)]
        base = _score(full(tokens), tokens, spans)
        sources = []
        for m in (oracle, model):
            _, cache = m.run_with_cache(tokens.to(device_of(m)), names_filter=lambda name: name in names)
            sources.append({n: cache[n].to(device) for n in names})
        deltas: list[list[list[float]]] = [[], []]             # [stage][layer][row]
        for stage, cache in enumerate(sources):
            for name in names:
                def patch(resid, hook, src=cache[name]):
                    resid = resid.clone()
                    for i, (s, e) in enumerate(spans):
                        resid[i, s:e] = src[i, s:e].to(resid.dtype)
                    return resid
                scores = _score(full.run_with_hooks(tokens, fwd_hooks=[(name, patch)]), tokens, spans)
                deltas[stage].append([b - x for b, x in zip(base, scores, strict=True)])
        for i in range(len(chunk)):
            d1 = [deltas[0][layer][i] for layer in range(n_layers)]
            d2 = [deltas[1][layer][i] for layer in range(n_layers)]
            out.full.append(base[i])
            out.delta1.append(d1)
            out.delta2.append(d2)
            out.uds.append(fact_uds(d1, d2, tau))
    return out
