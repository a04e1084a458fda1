"""The relearning attack: fine-tune on half the forget facts, then ask for the other half.

Knowledge that was only hidden comes back when the model is nudged with
related data; knowledge that was removed has to be learned from scratch and
cannot come back for facts the attacker never showed. The forget facts are
split in two (seeded); a copy of the model is fine-tuned for `steps` Adam
steps on one half and probed on the other, then the halves swap, so every
fact is measured once. The model given is never changed.

Compare with the same attack on the retrain oracle (it never learned the
facts): recall above the oracle's means the edit hid the knowledge.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from excise.facts import Fact
from excise.models import copy_model
from excise.scoring import answer_examples, answer_logprobs
from excise.verify.probes import Probe, probe


@dataclass(frozen=True)
class RelearnConfig:
    steps: int = 30                     # Adam steps per fold; organism 5% split: hidden facts return, oracle stays at chance
    lr: float = 1e-3                    # the organism was trained at 3e-3
    families: tuple[str, ...] = ("request", "paraphrase")   # what the attacker trains on
    probe_families: tuple[str, ...] = ("request",)          # what is asked of the held-out half
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class RelearnResult:
    probes: list[Probe]                 # the held-out half of each fold, after fine-tuning
    config: RelearnConfig

    @property
    def recall(self) -> float:
        return sum(p.recalled for p in self.probes) / max(1, len(self.probes))

    def to_dict(self) -> dict[str, Any]:
        return {"recall": self.recall, "config": asdict(self.config), "probes": [p.to_dict() for p in self.probes]}


def split_halves(facts: Sequence[Fact], seed: int) -> tuple[list[Fact], list[Fact]]:
    order = list(facts)
    random.Random(seed).shuffle(order)
    mid = len(order) // 2
    return order[:mid], order[mid:]


def finetune(model: Any, facts: Sequence[Fact], config: RelearnConfig) -> Any:
    """A fine-tuned copy of `model` (full-batch Adam on the facts' `config.families` prompts)."""
    tuned = copy_model(model)
    examples = answer_examples(tuned, facts, config.families)
    params = [p for p in tuned.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config.lr)
    torch.manual_seed(config.seed)
    with torch.enable_grad():
        for _ in range(config.steps):
            loss = -answer_logprobs(tuned, examples).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for p in params:
        p.grad = None
    return tuned


def relearn(model: Any, facts: Sequence[Fact], config: RelearnConfig | None = None, top_k: int = 20) -> RelearnResult:
    """Two folds: fine-tune a copy on one half, probe the other; returns a RelearnResult.

    Cost: 2 x `config.steps` forward + backward passes, then a probe of each
    half; memory: one copy of the model (and its optimizer state).
    """
    config = config or RelearnConfig()
    if len(facts) < 2:
        raise ValueError(f"the relearning attack needs at least 2 facts (one to train on, one to ask), "
                         f"got {len(facts)}")
    a, b = split_halves(facts, config.seed)
    probes = []
    for train, test in ((a, b), (b, a)):
        tuned = finetune(model, train, config)
        probes += probe(tuned, test, config.probe_families, top_k)
        del tuned
    return RelearnResult(probes, config)
