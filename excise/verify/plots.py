"""The audit figure: where the target can still be read, which attacks work, and the TOFU trade-off."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from excise.verify.report import AuditReport
    from excise.verify.results import AttackRanks

COLOURS = {"reference": "tab:blue", "edited": "tab:red", "oracle": "tab:green"}


def _lens_layers(attacks: AttackRanks) -> np.ndarray | None:
    """[facts, layers] logit-lens ranks (best prompt per fact; older reports: every prompt's row)."""
    if attacks.lens_layers:
        return np.array(attacks.lens_layers, dtype=float)
    rows = attacks.lens_rows
    return np.array([r["ranks"] for r in rows], dtype=float) if rows else None


def plot_report(report: AuditReport):
    """Three panels: logit-lens rank per layer against never-seen facts', attack success vs chance, forget
    quality vs utility. Cost: no model call, only the report's numbers."""
    from matplotlib.figure import Figure

    from excise.verify.attacks import audited

    roles = report.roles()
    tradeoff = [r for r in roles if report.forget_quality(r) is not None and report.utility(r) is not None]
    fig = Figure(figsize=(15 if tradeoff else 10.5, 4.2))           # no pyplot state: shown once, when returned
    axes = fig.subplots(1, 3 if tradeoff else 2)

    ax = axes[0]
    n_layers = 0

    def band(ranks: np.ndarray, colour: str, label: str, style: str = "-") -> None:
        med = np.median(ranks, axis=0)
        q1, q3 = np.percentile(ranks, 25, axis=0), np.percentile(ranks, 75, axis=0)
        x = np.arange(ranks.shape[1])
        ax.plot(x, med + 1, marker="o", color=colour, label=label, linestyle=style)
        ax.fill_between(x, q1 + 1, q3 + 1, color=colour, alpha=0.15)

    for role in roles:
        ranks = _lens_layers(report.models[role].attacks)
        if ranks is not None:
            band(ranks, COLOURS[role], role)
            n_layers = max(n_layers, ranks.shape[1])
    main = "edited" if "edited" in roles else roles[0]
    chance = report.models[main].chance
    never = chance.lens_layers if chance is not None else None
    if never:                  # what a model that never saw the facts does: the holdout under the same model
        band(np.array(never, dtype=float), "grey", f"never-seen facts ({main} model)", "--")
    ax.set_xticks(np.arange(n_layers))
    ax.set_yscale("log")
    ax.invert_yaxis()
    ax.set_xlabel("layer (residual stream after it)")
    ax.set_ylabel("target rank + 1 (median, IQR shaded)")
    ax.set_title("Logit lens: where the answer is readable" if n_layers else "Logit lens: not run")
    if n_layers:
        ax.legend(fontsize=8)

    ax = axes[1]
    attacks = [a for a in (*audited(), "any") if any(report.success(r, a) is not None for r in roles)]
    width = 0.8 / max(1, len(roles))
    for i, role in enumerate(roles):
        vals = [report.success(role, a) or 0.0 for a in attacks]
        xs = np.arange(len(attacks)) + (i - (len(roles) - 1) / 2) * width
        ax.bar(xs, vals, width, color=COLOURS[role], label=role)
        for x, a in zip(xs, attacks, strict=True):
            c = report.chance(role, a) if a != "any" else None
            if c is not None:
                ax.plot([x - width / 2, x + width / 2], [c, c], color="black", linewidth=1.5)
    ax.set_xticks(np.arange(len(attacks)), [a.replace("_", " ") for a in attacks])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"share of facts leaked (top-{report.top_b})")
    ax.set_title("Attack success (black ticks: chance on never-seen facts)")
    ax.legend(fontsize=8, loc="upper right", framealpha=0.9)
    if not tradeoff:          # the TOFU panel needs an oracle, a reference and alternatives
        fig.tight_layout()
        return fig

    ax = axes[2]
    for role in tradeoff:
        fq, ut = report.forget_quality(role), report.utility(role)
        ax.scatter([ut], [max(fq, 1e-300)], s=80, color=COLOURS[role], label=role,
                   marker="*" if role == "oracle" else "o")
    ax.set_yscale("log")
    ax.set_xlim(0, 1.1)
    ax.axhline(0.05, color="grey", linestyle="--", linewidth=1, label="p = 0.05")
    ax.legend(fontsize=8)
    ax.set_xlabel("model utility / reference")
    ax.set_ylabel("forget quality (KS p vs oracle)")
    ax.set_title("Forget quality vs utility (TOFU)")
    fig.tight_layout()
    return fig
