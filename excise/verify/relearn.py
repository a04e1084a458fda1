"""The relearning attack: fine-tune on half the forget facts, then ask for the other half.

Knowledge that was only hidden comes back when the model is nudged with
related data; knowledge that was removed has to be learned from scratch and
cannot come back for facts the attacker never showed. The forget facts are
split in two (seeded); a copy of the model is fine-tuned for `steps` Adam
steps on one half and probed on the other, then the halves swap, so every
fact is measured once. The model given is never changed.

Compare with the same attack on the retrain oracle (it never learned the
facts): recall above the oracle's means the edit hid the knowledge.

`relearn_curve` measures the same recall after several step counts (0, 10,
30, 100 by default), with either attack: fine-tuning on the other half of the
forget facts, or on unrelated facts (Lucki et al. 2024: a few unrelated
examples bring back what RMU hid), next to the oracle under the same attack.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from excise.facts import Fact
from excise.scoring import answer_examples, answer_logprobs, recall_table
from excise.verify.probes import Probe, probe
from excise.weights import copy_model


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


def _adam_steps(model: Any, examples: list, opt: torch.optim.Optimizer, n: int, chunks: int = 3) -> None:
    """`n` full-batch Adam steps on the answers' NLL (the mean over every example).

    The batch goes through the model in `chunks` forwards of examples sorted by length, so each pads to its
    own longest: the same loss and gradient up to rounding (1e-7 in the log-probs), with less padding (180
    request and paraphrase examples of 45 organism facts: 0.34 -> 0.26 s a step)."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    parts = [[examples[i] for i in order[c * len(order) // chunks:(c + 1) * len(order) // chunks]]
             for c in range(chunks)]
    parts = [p for p in parts if p]
    with torch.enable_grad():
        for _ in range(n):
            loss = -torch.cat([answer_logprobs(model, p) for p in parts]).sum() / len(examples)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def finetune(model: Any, facts: Sequence[Fact], config: RelearnConfig) -> Any:
    """A fine-tuned copy of `model` (full-batch Adam on the facts' `config.families` prompts)."""
    tuned = copy_model(model)
    examples = answer_examples(tuned, facts, config.families)
    params = [p for p in tuned.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config.lr)
    torch.manual_seed(config.seed)
    _adam_steps(tuned, examples, opt, config.steps)
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


CURVE_ATTACKS = ("other_half", "unrelated")


@dataclass
class RelearnCurve:
    """Relearned top-1 recall of the forget facts after each number of fine-tuning steps.

    `relearned[i]` of `n_probes` probes (one per held-out fact and template of
    `config.probe_families`) are recalled after `steps[i]` steps; `oracle_relearned`
    the same for the retrain oracle under the same attack, when one was given.
    """

    steps: tuple[int, ...]
    relearned: tuple[int, ...]
    n_probes: int
    on: str                                    # "other_half" or "unrelated"
    config: RelearnConfig
    oracle_relearned: tuple[int, ...] | None = None

    @property
    def recall(self) -> tuple[float, ...]:
        return tuple(k / max(1, self.n_probes) for k in self.relearned)

    @property
    def oracle_recall(self) -> tuple[float, ...] | None:
        if self.oracle_relearned is None:
            return None
        return tuple(k / max(1, self.n_probes) for k in self.oracle_relearned)

    def at(self, step: int) -> float:
        """The relearned recall after `step` steps (one of `steps`)."""
        if step not in self.steps:
            raise ValueError(f"no measurement at {step} steps; measured at {self.steps}")
        return self.recall[self.steps.index(step)]

    def summary(self) -> str:
        head = f"relearning on {self.on.replace('_', ' ')}: recall of {self.n_probes} held-out probes"
        lines = [head, "steps | relearned | recall" + (" | oracle" if self.oracle_relearned else "")]
        for i, s in enumerate(self.steps):
            row = f"{s:5d} | {self.relearned[i]:9d} | {self.recall[i]:.3f}"
            if self.oracle_recall is not None:
                row += f" | {self.oracle_recall[i]:.3f}"
            lines.append(row)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"on": self.on, "steps": list(self.steps), "relearned": list(self.relearned),
                "recall": list(self.recall), "n_probes": self.n_probes,
                "oracle_relearned": list(self.oracle_relearned) if self.oracle_relearned is not None else None,
                "oracle_recall": list(self.oracle_recall) if self.oracle_recall is not None else None,
                "config": asdict(self.config)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RelearnCurve:
        oracle = d.get("oracle_relearned")
        return cls(tuple(d["steps"]), tuple(d["relearned"]), d["n_probes"], d["on"], RelearnConfig(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in d["config"].items()}),
            tuple(oracle) if oracle is not None else None)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> RelearnCurve:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def plot(self, ax: Any = None):
        """Steps on x, relearned recall on y; the oracle's curve dashed, as the floor. Returns the Figure."""
        from matplotlib.figure import Figure

        if ax is None:
            fig = Figure(figsize=(5, 3.6))             # no pyplot state: shown once, when returned
            ax = fig.subplots()
        else:
            fig = ax.figure
        ax.plot(self.steps, self.recall, marker="o", color="tab:red", label="edited")
        if self.oracle_recall is not None:
            ax.plot(self.steps, self.oracle_recall, marker="o", linestyle="--", color="tab:green",
                    label="retrain oracle (the floor)")
        ax.set_xlabel(f"fine-tuning steps on {self.on.replace('_', ' ')}")
        ax.set_ylabel("relearned recall (top-1, held-out facts)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"Relearning: {self.n_probes} held-out probes")
        ax.legend(fontsize=8)
        return fig

    def __repr__(self) -> str:
        pts = ", ".join(f"{s}: {r:.2f}" for s, r in zip(self.steps, self.recall, strict=True))
        oracle = "" if self.oracle_recall is None else \
            "; oracle " + ", ".join(f"{r:.2f}" for r in self.oracle_recall)
        return f"RelearnCurve(on={self.on}, {self.n_probes} probes, recall by step {{{pts}}}{oracle})"


def _curve(model: Any, folds: list[tuple[list[Fact], list[Fact]]], steps: list[int],
           config: RelearnConfig) -> tuple[tuple[int, ...], int]:
    """Probes recalled at each step count (summed over folds) and the number of probes."""
    relearned = dict.fromkeys(steps, 0)
    n_probes = 0
    for train, test in folds:
        tuned, done, opt, examples = None, 0, None, None
        for s in steps:
            if s > 0 and tuned is None:
                tuned = copy_model(model)
                examples = answer_examples(tuned, train, config.families)
                opt = torch.optim.Adam([p for p in tuned.parameters() if p.requires_grad], lr=config.lr)
            if s > done:
                _adam_steps(tuned, examples, opt, s - done)
                done = s
            rows = recall_table(tuned if s > 0 else model, test, config.probe_families).rows
            relearned[s] += sum(r["recalled"] for r in rows)
        n_probes += len(rows)
        del tuned
    return tuple(relearned[s] for s in steps), n_probes


def relearn_curve(
    model: Any, facts: Sequence[Fact], steps: Sequence[int] = (0, 10, 30, 100), on: str = "other_half",
    unrelated: Sequence[Fact] | None = None, config: RelearnConfig | None = None, oracle: Any = None,
) -> RelearnCurve:
    """Relearned recall of `facts` after each of `steps` fine-tuning steps, under one relearning attack.

    on="other_half": two folds (the halves `config.seed` splits), a copy fine-tuned on one half
    and the other half probed, so every fact is probed once; on="unrelated" (Lucki et al. 2024):
    a copy fine-tuned on `unrelated` (facts disjoint from `facts`, e.g. never-seen people's facts),
    every fact probed. Full-batch Adam at `config.lr` on `config.families` prompts (as `relearn`;
    `config.steps` is unused: `steps` says where to measure); recall is `recall_table`'s top-1
    under `config.probe_families`, so step 0 is the model's plain recall. `oracle`: the retrain
    oracle (a model, or a callable returning one), attacked the same way, as the floor.
    The models passed in are never changed (a copy is fine-tuned).

    Returns a RelearnCurve (`.recall`, `.oracle_recall`, `.plot()`, `.summary()`). Cost: max(steps)
    forward + backward passes per fold (2 folds for other_half, 1 for unrelated) on one copy of the
    model and its Adam state, and a recall probe per fold and step count; twice that with an oracle.
    """
    config = config or RelearnConfig()
    facts = list(facts)
    marks = sorted(set(int(s) for s in steps))
    if not marks or marks[0] < 0:
        raise ValueError(f"steps must be non-negative step counts, got {tuple(steps)}")
    if on not in CURVE_ATTACKS:
        raise ValueError(f"on must be one of {CURVE_ATTACKS}, got {on!r}")
    if on == "other_half":
        if len(facts) < 2:
            raise ValueError(f"relearning on the other half needs at least 2 facts, got {len(facts)}")
        a, b = split_halves(facts, config.seed)
        folds = [(a, b), (b, a)]
    else:
        if not unrelated:
            raise ValueError("on='unrelated' fine-tunes on unrelated facts: pass unrelated= (facts disjoint from "
                             "the forget facts, e.g. never-seen people's facts from the context's holdout)")
        shared = {f.key for f in facts} & {f.key for f in unrelated}
        if shared:
            raise ValueError(f"unrelated= shares {len(shared)} fact(s) with the forget facts, e.g. "
                             f"{sorted(shared)[0]}; pass facts about other subjects")
        folds = [(list(unrelated), facts)]
    relearned, n_probes = _curve(model, folds, marks, config)
    oracle_relearned = None
    if oracle is not None:
        oracle = oracle if isinstance(oracle, torch.nn.Module) else oracle()
        oracle_relearned, _ = _curve(oracle, folds, marks, config)
    return RelearnCurve(tuple(marks), relearned, n_probes, on, config, oracle_relearned)
