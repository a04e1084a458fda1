"""The entanglement map: delete one fact, watch every other one.

    ent = excise.verify.entanglement(model, facts)       # ROME deletions, attribution-located neurons
    ent.plot(); ent.correlation; ent.by_group()

For each fact i, delete it (undo afterwards), and measure every fact j's
request recall (top-1) and the change of its target log-probability. Facts
are ordered by subject, then relation, so same-subject blocks sit on the
diagonal. Next to the interference, the overlap (Jaccard) of the facts'
top-k located components, and the Spearman correlation between overlap and
interference over all pairs i != j: does sharing components predict that
deleting one fact damages the other?
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from excise.facts import Fact


@dataclass
class Entanglement:
    facts: list[dict[str, str]]          # subject, relation, target, in matrix order
    recall: np.ndarray                   # [i, j]: fact j recalled (top-1) after deleting fact i
    delta_logp: np.ndarray               # [i, j]: change of fact j's target log-prob after deleting i
    overlap: np.ndarray                  # [i, j]: Jaccard of the top-k located components
    recall_before: np.ndarray            # [j]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return [f"{f['subject']} · {f['relation']}" for f in self.facts]

    def _pairs(self) -> np.ndarray:
        return ~np.eye(len(self.facts), dtype=bool)

    @property
    def interference(self) -> np.ndarray:
        """-delta log-prob: how much deleting i pushed fact j down (positive = damage)."""
        return -self.delta_logp

    @property
    def correlation(self) -> dict[str, float | None]:
        """Spearman rho (and p) between component overlap and interference over pairs i != j."""
        from scipy.stats import spearmanr

        m = self._pairs()
        x, y = self.overlap[m], self.interference[m]
        if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            return {"rho": None, "p": None, "pairs": int(m.sum())}
        res = spearmanr(x, y)
        return {"rho": float(res.statistic), "p": float(res.pvalue), "pairs": int(m.sum())}

    def by_group(self) -> dict[str, dict[str, float | None]]:
        """Mean interference, recall kept and overlap for same-subject, same-relation and unrelated pairs."""
        subj = np.array([f["subject"] for f in self.facts])
        rel = np.array([f["relation"] for f in self.facts])
        same_s, same_r = subj[:, None] == subj[None, :], rel[:, None] == rel[None, :]
        groups = {"deleted fact itself": np.eye(len(subj), dtype=bool),
                  "same subject": same_s & self._pairs(), "same relation": same_r & ~same_s,
                  "unrelated": ~same_s & ~same_r}
        kept = self.recall & self.recall_before[None, :]
        out = {}
        for name, m in groups.items():
            base = m & self.recall_before[None, :]
            out[name] = {"pairs": int(m.sum()),
                         "interference": float(self.interference[m].mean()) if m.any() else None,
                         "recall_kept": float(kept[base].mean()) if base.any() else None,
                         "overlap": float(self.overlap[m].mean()) if m.any() else None}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"facts": self.facts, "recall": self.recall.tolist(), "delta_logp": self.delta_logp.tolist(),
                "overlap": self.overlap.tolist(), "recall_before": self.recall_before.tolist(),
                "meta": self.meta, "correlation": self.correlation, "by_group": self.by_group()}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Entanglement:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Entanglement:
        return cls(d["facts"], np.array(d["recall"], dtype=bool), np.array(d["delta_logp"]),
                   np.array(d["overlap"]), np.array(d["recall_before"], dtype=bool), d["meta"])

    def plot(self):
        """Interference heatmap, overlap heatmap, and overlap vs interference."""
        from matplotlib.figure import Figure

        n = len(self.facts)
        fig = Figure(figsize=(17, 5.6), layout="constrained")
        axes = fig.subplots(1, 3, width_ratios=[1, 1, 0.8])
        labels, fs = self.labels, max(4, min(8, 300 // max(n, 1)))
        off = np.abs(self.interference[self._pairs()])
        lim = float(off.max()) if off.size and off.max() > 0 else 1.0     # the diagonal saturates
        for ax, data, cmap, title, bar, vmin, vmax in (
            (axes[0], self.interference, "RdBu_r", "interference: -Δ log p(target j) after deleting i\n(colour scale: off-diagonal; the diagonal saturates)",
             "-Δ log p (nats; red = pushed down)", -lim, lim),
            (axes[1], self.overlap, "Greens", f"overlap of top-{self.meta.get('k')} located components",
             "Jaccard", 0.0, 1.0)):
            im = ax.imshow(data, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks(range(n), labels, rotation=90, fontsize=fs)
            ax.set_yticks(range(n), labels, fontsize=fs)
            ax.set_xlabel("fact j (measured)")
            ax.set_ylabel("fact i (deleted)")
            ax.set_title(title, fontsize=10)
            fig.colorbar(im, ax=ax, shrink=0.8).set_label(bar, fontsize=8)
        m = self._pairs()
        subj = np.array([f["subject"] for f in self.facts])
        same = (subj[:, None] == subj[None, :])[m]
        ax = axes[2]
        ax.scatter(self.overlap[m][~same], self.interference[m][~same], s=10, alpha=0.5, label="other subject")
        ax.scatter(self.overlap[m][same], self.interference[m][same], s=14, alpha=0.8, color="tab:red",
                   label="same subject")
        c = self.correlation
        rho = "n/a" if c["rho"] is None else f"{c['rho']:.2f} (p = {c['p']:.2g})"
        ax.set_title(f"overlap vs interference, pairs i != j\nSpearman rho = {rho}", fontsize=10)
        ax.set_xlabel("Jaccard overlap of located components")
        ax.set_ylabel("-Δ log p(target j) (nats)")
        ax.legend(fontsize=8)
        return fig

    def _repr_html_(self) -> str:
        """The notebook view: the overlap-interference correlation first, then the table by pair group."""
        from excise import display as d

        c = self.correlation
        rho = "n/a" if c["rho"] is None else f"{c['rho']:.3f} (p {c['p']:.2g})"
        rows = [[g, v["pairs"], v["interference"], v["recall_kept"], v["overlap"]] for g, v in self.by_group().items()]
        return (d.heading(f"{len(self.facts)} facts: Spearman rho(overlap, interference) = {rho} over {c['pairs']} pairs")
                + d.table(["pairs (i deleted, j measured)", "count", "interference (nats)", "recall kept",
                           "overlap (Jaccard)"], rows, caption="by group")
                + "<p>plot() draws the interference and overlap matrices</p>")

    def __repr__(self) -> str:
        c = self.correlation
        return (f"Entanglement({len(self.facts)} facts, rho(overlap, interference)="
                f"{'n/a' if c['rho'] is None else round(c['rho'], 3)})")


def _default_edit(context: Any) -> Callable[[Any, Fact], Any]:
    from excise import methods

    return lambda model, fact: methods.delete(model, [fact], "rome", progress=False, context=context)


def _default_locate(model: Any, fact: Fact):
    from excise.locate import attribution_patching

    return attribution_patching(model, fact, ("neuron",))


def entanglement(model: Any, facts: Sequence[Fact], edit: Callable[[Any, Fact], Any] | None = None,
                 locate: Callable[[Any, Fact], Any] | None = None, k: int = 32, kind: str = "neuron",
                 progress: bool = True, context: Any = None) -> Entanglement:
    """Delete each fact in turn (undone after), measuring every fact; returns an Entanglement (see the module docstring).

    edit(model, fact) -> EditRecord: default ROME head-projection deletion
        (`methods.delete`) at the layer and with the covariance sample of
        `context` (a KnowledgeContext; derived from the model when None). locate(model, fact) -> Localization with
        `kind` scores: default attribution patching of neurons; the top `k`
        by |score| form each fact's component set.
    Cost: len(facts) edits and undos, len(facts) + 1 batched forwards, and
    len(facts) localizations.
    """
    from excise.scoring import rank_prompts, target_first_ids

    facts = sorted(facts, key=lambda f: (f.subject, f.relation))
    if len(facts) < 2:
        raise ValueError("an entanglement map needs at least two facts")
    if k < 1:
        raise ValueError(f"k (components per fact) must be >= 1, got {k}")
    edit, locate = edit or _default_edit(context), locate or _default_locate
    prompts = [f.fill(f.prompt) for f in facts]
    ids = target_first_ids(model, prompts, [f.target for f in facts])

    def measure() -> tuple[np.ndarray, np.ndarray]:
        ranks, logps, _ = rank_prompts(model, prompts, ids)
        return (ranks == 0).numpy(), logps.numpy()

    recall0, logp0 = measure()
    n = len(facts)
    recall, delta = np.zeros((n, n), dtype=bool), np.zeros((n, n))
    sets = []
    for i, fact in enumerate(tqdm(facts, desc="entanglement", disable=not progress)):
        sets.append({s.component for s in locate(model, fact).top(k, kind=kind, by_abs=True)})
        record = edit(model, fact)
        try:
            r, lp = measure()
        finally:
            record.undo()
        recall[i], delta[i] = r, lp - logp0
    overlap = np.array([[len(a & b) / len(a | b) if a | b else 0.0 for b in sets] for a in sets])
    return Entanglement(
        facts=[{"subject": f.subject, "relation": f.relation, "target": f.target} for f in facts],
        recall=recall, delta_logp=delta, overlap=overlap, recall_before=recall0,
        meta={"k": k, "kind": kind, "edit": getattr(edit, "__name__", str(edit)),
              "locate": getattr(locate, "__name__", str(locate))},
    )
