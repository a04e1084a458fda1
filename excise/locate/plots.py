"""Figures of a Localization: ROME-style heatmaps and top-component bars.

Built on `matplotlib.figure.Figure` directly (no pyplot state); Jupyter shows
a returned Figure inline.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

if TYPE_CHECKING:
    from excise.locate.localization import Localization

_TITLES = {"resid": "residual stream", "mlp": "MLP output", "attn": "attention output",
           "head": "attention heads", "neuron": "MLP neurons"}
_CMAPS = {"resid": "Purples", "mlp": "Greens", "attn": "Reds", "head": "Blues", "neuron": "Oranges"}


def _token_labels(loc: Localization) -> list[str]:
    labels = [repr(t)[1:-1] for t in loc.tokens]
    if loc.subject is not None:
        start, end = loc.subject
        labels = [f"{t}*" if start <= i < end else t for i, t in enumerate(labels)]
    return labels


def plot_localization(loc: Localization, kinds: list[str] | None = None, top_k: int = 20) -> Figure:
    """One panel per kind: a (position x layer) heatmap where scores have both axes,
    else a bar chart of the top_k components."""
    kinds = kinds or loc.kinds
    fig = Figure(figsize=(4.2 * len(kinds), 4.4), layout="constrained")
    axes = fig.subplots(1, len(kinds), squeeze=False)[0]
    score_name = textwrap.fill(loc.meta.get("score", "score"), 28)
    for ax, kind in zip(axes, kinds, strict=True):
        s = loc.scores[loc._kind(kind)]
        names = loc.axes[kind]
        if names == ("layer", "position"):
            im = ax.imshow(s.T.numpy(), aspect="auto", cmap=_CMAPS.get(kind, "viridis"),
                           interpolation="nearest")
            ax.set_yticks(range(s.shape[1]), _token_labels(loc) or range(s.shape[1]))
            ax.set_xticks(range(s.shape[0]))
            ax.set_xlabel("layer")
            ax.set_ylabel("token (* = subject)")
            cbar = fig.colorbar(im, ax=ax, shrink=0.85)
            cbar.set_label(score_name, fontsize=8)
            ax.set_title(f"{loc.method}: {_TITLES.get(kind, kind)}", fontsize=10)
        elif names == ("layer",):
            ax.bar(range(s.shape[0]), s.numpy(), color="tab:green" if kind == "mlp" else "tab:red")
            ax.set_xticks(range(s.shape[0]))
            ax.set_xlabel("layer")
            ax.set_ylabel(score_name)
            ax.set_title(f"{loc.method}: {_TITLES.get(kind, kind)} per layer", fontsize=10)
        else:
            top = loc.top(top_k, kind)
            labels = [str(t.component) for t in top][::-1]
            ax.barh(range(len(top)), [t.score for t in top][::-1], color="tab:blue")
            ax.set_yticks(range(len(top)), labels, fontsize=7)
            ax.set_xlabel(score_name)
            ax.set_title(f"{loc.method}: top {len(top)} {_TITLES.get(kind, kind)}", fontsize=10)
    prompt = loc.meta.get("prompt")
    if prompt:
        target = loc.meta.get("fact", {}).get("target", "")
        fig.suptitle(f"{prompt!r} -> {target!r}", fontsize=10)
    return fig
