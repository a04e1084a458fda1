"""Counter-examples that an audit must see through: a guardrail and a shallow suppression.

- `guardrail(model, facts)`: an output filter (a hook on the final logits)
  that pushes every forget target's first token to the bottom. The request
  probe then says "forgotten", yet the answer is still computed inside the
  network: the logit-lens attack reads it from the residual stream.
- `suppress_last_layer(model, forget, retain)`: NPO unlearning confined to the last block. It hides the facts from every
  probe, but the knowledge upstream is intact, so the relearning attack
  brings it back faster than the retrain oracle can learn it.

- `over_suppress(model, forget, retain)`: NPO on every parameter run long past
  forgetting (no early stop). The targets end below what the model says for
  people it never saw: it knows what to avoid, and the two-sided leakage
  verdict must say `over_suppressed`.

All exist to calibrate `audit`: a verifier that passes them is broken.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from excise.components import Component
from excise.edit.record import EditRecord
from excise.facts import Fact
from excise.methods import unlearn
from excise.scoring import target_first_ids


def _blocked_ids(model: Any, facts: Sequence[Fact]) -> list[int]:
    prompts = [f.fill(t) for f in facts for fam in ("request", "paraphrase", "question", "completion")
               for t in f.templates(fam)]
    targets = [f.target for f in facts for fam in ("request", "paraphrase", "question", "completion")
               for _ in f.templates(fam)]
    return sorted(set(target_first_ids(model, prompts, targets)))


@contextmanager
def guardrail(model: Any, facts: Sequence[Fact], hook: str = "unembed.hook_out") -> Iterator[list[int]]:
    """Inside the block, the model's output logits of the facts' target tokens sit below every other token.

    Yields the blocked token ids. The hook is removed on exit, also on error.
    Cost: no forward of its own; each forward inside pays one clone of the logits.
    """
    ids = _blocked_ids(model, facts)
    if not ids:
        raise ValueError("guardrail needs at least one fact to block")
    blocked = torch.tensor(ids)

    def block(logits: torch.Tensor, hook: Any) -> torch.Tensor:
        floor = logits.min(dim=-1, keepdim=True).values - 10.0
        out = logits.clone()
        out[..., blocked.to(logits.device)] = floor
        return out

    with model.hooks(fwd_hooks=[(hook, block)]):
        yield ids


def suppress_last_layer(model: Any, forget: Sequence[Fact], retain: Sequence[Fact], steps: int = 300,
                        lr: float = 3e-3, seed: int = 0, progress: bool = False) -> EditRecord:
    """NPO unlearning of `forget` (with a retain term) that may change only the last block.

    On the organism's 5% split it stops after about 50 steps with no forget
    fact recalled and 0.8 of a retain sample still recalled.

    Returns the EditRecord. Cost: as `unlearn`, at most `steps` forward + backward passes.
    """
    last = model.cfg.n_layers - 1
    mask = [Component(layer=last, kind="mlp"), Component(layer=last, kind="attn")]
    return unlearn(model, forget, retain, "npo", mask=mask, steps=steps, lr=lr, seed=seed, progress=progress,
                   families=("request", "paraphrase", "question", "completion"))


def over_suppress(model: Any, forget: Sequence[Fact], retain: Sequence[Fact], steps: int = 200, lr: float = 1e-3,
                  seed: int = 0, progress: bool = False) -> EditRecord:
    """NPO unlearning of `forget` (with a retain term) on every parameter for exactly `steps` steps.

    On the organism's 5% split, 200 steps at 1e-3 put the targets' best probe
    rank at a median of ~1,100 against ~18 for never-seen people (probe AUC
    0.07) with 0.66 of a retain sample still recalled.
    """
    return unlearn(model, forget, retain, "npo", steps=steps, lr=lr, seed=seed, progress=progress,
                   stop_forget_recall=-1.0, eval_every=steps, families=("request", "paraphrase", "question", "completion"))
