"""Localization: scores over components, with labelled axes.

Every locate method returns one. Each *kind* (resid, mlp, attn, head,
neuron) holds a tensor whose axes are named: `("layer", "position")` for a
causal trace, `("layer", "index")` for heads or neurons, `("layer",
"position", "index")` for heads per position, `("layer",)` for layer totals.
`top`, `peak` and `to_components` turn cells back into `Component`s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from excise.components import KINDS, Component

AXES = ("layer", "position", "index")
# meta entries a reader needs to read the scores (the settings stay in meta)
_REFERENCE_NUMBERS = {"p_clean": "p(target) clean", "p_corrupt": "subject noised",
                      "metric_clean": "metric clean", "metric_corrupt": "corrupted",
                      "n_forget": "forget facts", "n_retain": "retain facts", "mean_of": "mean of"}


# The functional form keeps the field types as types (not strings under `from __future__ import
# annotations`), so tools that read the signature (pdoc) resolve them.
Scored = NamedTuple("Scored", [("component", Component), ("score", float)])
Scored.__doc__ = "One component and its score, as `Localization.top()` lists them."


@dataclass
class Localization:
    """Scores of one locate method over one or more component kinds.

    `scores[kind]` is a tensor whose axes are `axes[kind]` (a sub-sequence of
    ("layer", "position", "index")). `tokens` labels positions, `subject` is
    the subject's [start, end) token span, `meta` holds the method's settings
    and reference numbers (clean and corrupted scores, for instance).
    """

    method: str
    scores: dict[str, torch.Tensor]
    axes: dict[str, tuple[str, ...]]
    tokens: list[str] = field(default_factory=list)
    subject: tuple[int, int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if set(self.scores) != set(self.axes):
            raise ValueError(f"scores kinds {sorted(self.scores)} != axes kinds {sorted(self.axes)}")
        for kind, axes in self.axes.items():
            if kind not in KINDS:
                raise ValueError(f"unknown kind {kind!r}; a Localization scores {KINDS}")
            if axes[0] != "layer" or any(a not in AXES for a in axes):
                raise ValueError(f"axes of {kind} must start with 'layer' and use {AXES}, got {axes}")
            if self.scores[kind].dim() != len(axes):
                raise ValueError(f"{kind} scores have {self.scores[kind].dim()} dims but axes {axes}")
            self.scores[kind] = self.scores[kind].detach().float().cpu()

    @property
    def kinds(self) -> list[str]:
        return list(self.scores)

    def _kind(self, kind: str | None) -> str:
        if kind is None:
            if len(self.scores) != 1:
                raise ValueError(f"this localization has kinds {self.kinds}; pass kind=")
            return self.kinds[0]
        if kind not in self.scores:
            raise ValueError(f"no {kind!r} scores in this {self.method} localization; it has {self.kinds}")
        return kind

    def _component(self, kind: str, cell: tuple[int, ...]) -> Component:
        named = dict(zip(self.axes[kind], cell, strict=True))
        return Component(layer=named["layer"], kind=kind, index=named.get("index"),
                         position=named.get("position"))

    def top(self, k: int = 10, kind: str | None = None, by_abs: bool = False) -> list[Scored]:
        """The k highest-scoring components of one kind (by |score| if by_abs)."""
        kind = self._kind(kind)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        s = self.scores[kind]
        flat = s.abs().flatten() if by_abs else s.flatten()
        scored = int((~flat.isnan()).sum())                       # NaN: not measured
        order = torch.argsort(flat.nan_to_num(float("-inf")), descending=True, stable=True)
        order = order[:min(k, scored)]
        cells = [tuple(int(i) for i in torch.unravel_index(o, s.shape)) for o in order]
        return [Scored(self._component(kind, c), float(s[c])) for c in cells]

    def peak(self, kind: str | None = None) -> Component:
        """The single highest-scoring component of one kind."""
        return self.top(1, kind)[0].component

    def to_components(self, k: int | None = None, kind: str | None = None) -> list[Component]:
        kind = self._kind(kind)
        k = self.scores[kind].numel() if k is None else k
        return [s.component for s in self.top(k, kind)]

    def layer_scores(self, kind: str | None = None, reduce: str = "max") -> torch.Tensor:
        """One number per layer: the max (or sum) over the other axes."""
        s = self.scores[self._kind(kind)]
        flat = s.reshape(s.shape[0], -1)
        if reduce == "max":
            return flat.max(dim=1).values
        if reduce == "sum":
            return flat.sum(dim=1)
        raise ValueError(f"reduce must be 'max' or 'sum', got {reduce!r}")

    @classmethod
    def mean(cls, locs: list[Localization]) -> Localization:
        """The mean of several localizations of the same method over one set of facts (e.g. one per
        fact), for the kinds whose axes carry no positions (prompts differ in length)."""
        if not locs:
            raise ValueError("Localization.mean needs at least one localization")
        kinds = [k for k in locs[0].kinds if "position" not in locs[0].axes[k]]
        if not kinds:
            raise ValueError("nothing to average: every kind is per position; ask for layer/index scores "
                             "(e.g. heads summed over positions, neurons at one position)")
        for other in locs[1:]:
            if other.method != locs[0].method or any(other.axes.get(k) != locs[0].axes[k] or
                                                     other.scores[k].shape != locs[0].scores[k].shape for k in kinds):
                raise ValueError("Localization.mean needs localizations of one method with the same kinds and shapes")
        scores = {k: torch.stack([loc.scores[k] for loc in locs]).mean(0) for k in kinds}
        return cls(method=locs[0].method, scores=scores, axes={k: locs[0].axes[k] for k in kinds},
                   meta={"mean_of": len(locs), "facts": [loc.meta.get("fact") for loc in locs]})

    # -- persistence ------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "axes": {k: list(v) for k, v in self.axes.items()},
                "scores": {k: v.tolist() for k, v in self.scores.items()},
                "tokens": self.tokens, "subject": list(self.subject) if self.subject else None,
                "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Localization:
        return cls(method=d["method"], scores={k: torch.tensor(v) for k, v in d["scores"].items()},
                   axes={k: tuple(v) for k, v in d["axes"].items()}, tokens=d["tokens"],
                   subject=tuple(d["subject"]) if d["subject"] else None, meta=d["meta"])

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> Localization:
        return cls.from_dict(json.loads(Path(path).read_text()))

    # -- display ----------------------------------------------------------
    def plot(self, kinds: list[str] | None = None, top_k: int = 20):
        from excise.locate.plots import plot_localization

        return plot_localization(self, kinds, top_k)

    def _repr_html_(self) -> str:
        """The notebook view: what was measured, the figure (`plot()`, inline PNG), and the top 5 per kind."""
        from excise import display as d

        title = f"{self.method}"
        fact = self.meta.get("fact") or {}
        if self.meta.get("prompt"):
            title += f": {self.meta['prompt']!r} -> {fact.get('target', '')!r}"
        elif self.meta.get("mean_of"):
            title += f": mean of {self.meta['mean_of']} localizations"
        notes = ", ".join(f"{label} {d.fmt(self.meta[k])}" for k, label in _REFERENCE_NUMBERS.items()
                          if isinstance(self.meta.get(k), (int, float)))
        tables = []
        for kind in self.kinds:
            rows = []
            for s in self.top(5, kind):
                pos = s.component.position
                token = self.tokens[pos] if pos is not None and pos < len(self.tokens) else None
                rows.append([str(s.component), *([repr(token)] if self.tokens else []), s.score])
            tables.append(d.table(["component", *(["token"] if self.tokens else []), "score"], rows,
                                  caption=f"top {kind}"))
        return (d.heading(title) + (f"<p>{d.escape(notes)}</p>" if notes else "") + d.figure(self.plot())
                + d.side_by_side(tables))

    def __repr__(self) -> str:
        parts = []
        for kind, s in self.scores.items():
            shape = "x".join(str(n) for n in s.shape)
            parts.append(f"{kind}[{shape}] peak {self.peak(kind)}={float(s.max()):.3g}")
        return f"Localization({self.method}: " + "; ".join(parts) + ")"
