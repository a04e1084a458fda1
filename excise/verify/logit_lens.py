"""The logit-lens attack (Patil et al. 2023): read the answer out of the residual stream.

A deletion that only hides the target at the output still leaves it
readable in the middle of the network. For every prompt, the residual
stream after each layer at the last position is read through the model's
own final norm and unembedding (TransformerLens 4's
`tools.analysis.logit_readout`, the kernel of its `logit_lens`); the attack
succeeds on a fact when the target's first token is among the top-B
candidates at any layer.

We gather the last real position of each right-padded prompt ourselves and
call `logit_readout` on those vectors: `logit_lens` reads one shared
position for a batch, and re-checks its last entry against the model's
own output, which an output-side guardrail (the case this attack exists
for) deliberately changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformer_lens.tools.analysis import logit_readout

from excise.facts import Fact
from excise.scoring import encode, pad_batch, target_first_ids


@dataclass(frozen=True)
class LensProbe:
    """The target's rank after every layer for one prompt of one fact."""

    subject: str
    relation: str
    family: str
    prompt: str
    target: str
    ranks: tuple[int, ...]        # after layer 0, 1, ..., n_layers - 1 (the last equals the output)
    best_layer: int               # the layer where the target ranks highest
    top: tuple[str, ...]          # top candidates at best_layer

    @property
    def best_rank(self) -> int:
        return self.ranks[self.best_layer]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _names(n_layers: int):
    last = f"blocks.{n_layers - 1}.hook_resid_post"
    return lambda name: name.endswith("hook_resid_pre") or name == last


@torch.no_grad()
def logit_lens(model: Any, facts: Sequence[Fact], families: Sequence[str] = ("request",), top_k: int = 20,
               batch_size: int = 64) -> list[LensProbe]:
    """Logit-lens ranks of each fact's target after every layer, at each prompt's last token.

    Cost: ceil(P / batch_size) cached forwards plus two readouts of
    n_layers x P vectors (ranks, then top-k candidates), P = number of prompts.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    jobs = [(f, fam, t) for f in facts for fam in families for t in f.templates(fam)]
    if not jobs:
        return []
    prompts = [f.fill(t) for f, _, t in jobs]
    tids = target_first_ids(model, prompts, [f.target for f, _, _ in jobs])
    rows = encode(model, prompts)
    pad = model.tokenizer.pad_token_id or 0
    device = next(iter(model.parameters())).device
    names = _names(model.cfg.n_layers)
    ranks, tops = [], []
    for start in range(0, len(rows), batch_size):
        tokens, last = pad_batch(rows[start:start + batch_size], pad)
        _, cache = model.run_with_cache(tokens.to(device), names_filter=names)
        stack = cache.accumulated_resid()[1:]               # [layer, batch, pos, d]: after each layer
        vectors = stack[:, torch.arange(len(last)), last.to(device)]   # [layer, batch, d]
        targets = torch.tensor(tids[start:start + batch_size], device=device)
        ranks.append(logit_readout(model, vectors, targets=targets).target_ranks[..., 0].cpu())
        tops.append(logit_readout(model, vectors, top_k=top_k).top_ids.cpu())
    rank = torch.cat(ranks, dim=1)                           # [layer, P]
    top = torch.cat(tops, dim=1)                             # [layer, P, k]
    decode = model.tokenizer.decode
    out = []
    for i, ((f, fam, _), prompt) in enumerate(zip(jobs, prompts, strict=True)):
        best = int(rank[:, i].argmin())
        out.append(LensProbe(f.subject, f.relation, fam, prompt, f.target, tuple(rank[:, i].tolist()), best,
                             tuple(decode([int(t)]) for t in top[best, i])))
    return out
