"""Where a rank-one edit writes: the (layer, position role) the causal trace points to.

    site = excise.locate.edit_site(model, facts)     # one MLP trace per fact
    excise.edit.rome_each(model, facts, RomeConfig(layer=site.layer, position=site.position), ...)

Each fact's MLPs are traced (`causal_trace`, subject noised) and read at two
positions: the last subject token (ROME's site; every layer but the last,
whose output there cannot reach the answer) and the prompt's last token
(layers from n_layers // 2 on). A restored share is (restored p - noised p)
/ (clean p - noised p), for the best layer of each role, over the facts'
mean curves.

The rule: the prompt's last token, at its best late layer, when its share is
at least `min_restored`; else the last subject token when its share is; else
(neither carries the fact by the trace) the prompt's last token, with a
warning that gives the numbers. Why, measured (`excise bench sites`,
benchmarks/results/sites.md; ROME head_projection_unlikelihood, 10 facts):

- A write at the subject's last token changes one key per subject: in a
  template that starts with the subject, that token sees nothing of the
  relation, so every fact of the subject has the same key there and deleting
  one moves the others (kept only through the value's KL term: same-subject
  kept 0.83 on the foreign Llama). The prompt's last token carries subject
  and relation together: same-subject kept 1.00 on all four models.
- Early last-token MLPs write for the template: at layer 0 the last token has
  had one attention hop from the subject, and a write there deleted the
  relation for other subjects as well (other subjects kept 0.55 on the
  foreign Llama, 0.60 on the foreign GPT-2), hence the late layers only.
- The restored share predicts the edit's success only loosely (Hase et al.
  2023, "Does localization inform editing?"): the foreign GPT-2's late
  last-token MLPs restore 4% of the damage, yet a deletion there reaches
  efficacy 1.00; the organism's subject MLPs restore 5% and a subject edit
  still works (paraphrase forget 0.93 vs 1.00 at the prompt's end).

What no site fixes, measured on the organism's 5% split (90 facts, ROME
head_projection_unlikelihood one fact after another, audited against 180
never-seen facts): every single-site rank-one deletion reaches efficacy
0.96-1.00 and still leaks to the relearning attack. Relearned top-1 recall,
with the oracle's 0.011: 0.42 at layer 1, 0.43 at layer 2 and 0.32 at layer 3
(prompt's end), 0.28 at layer 0 (last subject token). The logit lens reads the
answer below the write (AUC 0.82-0.96 for writes at layers 2-3; one at layer 1 pushes the lens
below chance, 0.29). The write hides the fact at its site; the subject's
representation upstream keeps it. On the foreign models the traced write also
reaches other subjects' facts of the same relation (kept 0.84 Llama, 0.94
GPT-2), and ROME's `protect` (8 or 32 of the most exposed other-subject facts
in the value's KL term, evaluated on others) leaves those figures unchanged:
the spill comes from the key direction u, which the value optimization cannot
move. Moving u does move it, at a price in efficacy: MEMIT at the traced site
with AlphaEdit's null space of the other subjects' keys (every token of their
prompts, none of the facts evaluated; 20 facts each, one at a time) traces a
trade-off, (efficacy, other subjects kept): on the Llama (1.00, 0.84) without
it, (1.00, 0.94) at L2 0.1, (0.95, 0.96) at L2 1, (0.10, 1.00) at AlphaEdit's
L2 10; on the GPT-2 (1.00, 0.94) without, (0.85, 0.95) at L2 0.1, (0.60, 0.975)
at L2 1, (0.95, 0.975) with the relative threshold 1e-2 at L2 1, which on the
Llama gives (1.00, 0.85). The last layer at the prompt's end spills less than
the traced layer 1 and still misses (ROME erase_unlikelihood, 20 facts): others
kept 0.89 on the Llama (0.81 at layer 1, 0.33 at layer 0), 0.96 on the GPT-2
(0.93, 0.65), efficacy 1.00 on both; with the null space there, (efficacy,
others) on the GPT-2 (0.90, 0.975) at L2 0.1, (0.35, 0.99) at L2 1, on the
Llama (1.00, 0.90) at L2 0.1, (0.85, 0.95) at L2 1, (0.70, 0.975) at the
threshold 5e-3 and L2 1. MEMIT over both late layers (1 and 2) at the prompt's
end, with the null space (sample: generated_sample), plateaus at others 0.96 on
both: Llama (1.00, 0.95) at L2 0.1, (1.00, 0.96) at 0.3, (0.95, 0.96) at 1;
GPT-2 (0.85, 0.96) at L2 0.1, (0.80, 0.96) at 0.3, (0.60, 0.96) at 1 (without
the null space its default covariance weight leaves efficacy 0.00 on both). No
setting reaches efficacy 0.95 with others 0.98 on
both: at the prompt's end a fact's key shares its directions with the same
relation's other subjects' keys (172 and 256 key dimensions here).

`excise.methods.delete` uses it when no layer is given; the record keeps
the site and the reason (`record.meta["site"]`).
"""

from __future__ import annotations

import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from excise.facts import Fact
from excise.weights import model_fingerprint

# Share of the subject-noising damage (p_clean - p_corrupt) that a role's best MLP layer must restore for the
# trace to count it as where the fact is retrieved. Measured (20 facts each, seed 0): the last prompt token's
# late MLPs restore 0.18 (organism), 0.47 (stories260k), 0.04 (foreign GPT-2), 0.35 (foreign Llama); the last
# subject token's 0.05, 0.08, 0.03, 0.66.
MIN_RESTORED = 0.1


@dataclass(frozen=True)
class EditSite:
    """The traced (layer, position role) for rank-one edits, and the numbers behind it."""

    layer: int
    scores: list[float | None]   # per layer: restored p(target) at the chosen role, mean over facts (None: not edited)
    peaks: list[int]             # per fact: its own argmax layer at the chosen role (among the candidates)
    p_clean: float               # mean over facts
    p_corrupt: float             # mean over facts (subject noised, nothing restored)
    restored: float              # (scores[layer] - p_corrupt) / (p_clean - p_corrupt)
    seconds: float
    reason: str
    position: str = "subject_last"
    # per role: restored p(target) per layer (None where the role is not a candidate), and its best share
    roles: dict[str, list[float | None]] = field(default_factory=dict)
    shares: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EditSite:
        return cls(**d)

    def share(self, layer: int) -> float | None:
        """The share of the noising damage that restoring `layer`'s MLP at the chosen role gives back."""
        score = self.scores[layer]
        return None if score is None else (score - self.p_corrupt) / max(self.p_clean - self.p_corrupt, 1e-9)

    def supported(self, fraction: float) -> tuple[int, ...]:
        """The layers the trace supports: the traced layer and its neighbours, contiguous, whose MLPs restore at
        least `fraction` of the traced layer's share (MEMIT's critical range). fraction 1: the traced layer."""
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        peak = self.share(self.layer)
        if peak is None or peak <= 0:
            return (self.layer,)

        def holds(layer: int) -> bool:
            share = self.share(layer) if 0 <= layer < len(self.scores) else None
            return share is not None and share >= fraction * peak

        low, high = self.layer, self.layer
        while holds(low - 1):
            low -= 1
        while holds(high + 1):
            high += 1
        return tuple(range(low, high + 1))

    def summary(self) -> str:
        def curve(values):
            return ", ".join(f"L{i} {s:.2f}" for i, s in enumerate(values) if s is not None)

        per_role = "; ".join(f"{role}: {curve(v)} (share {self.shares[role]:.0%})" for role, v in self.roles.items())
        return (f"edit site: layer {self.layer} at {self.position} ({self.reason}); restored p(target) by "
                f"layer: {per_role or curve(self.scores)} (clean {self.p_clean:.2f}, noised {self.p_corrupt:.2f}); "
                f"traced in {self.seconds:.1f}s")


def candidate_layers(role: str, n_layers: int) -> range:
    """The layers `edit_site` considers for a role: below the last block at the subject, the late half at the end."""
    return range(n_layers - 1) if role == "subject_last" else range(n_layers // 2, n_layers)


# (model fingerprint, fact, seed, the batch's subjects) -> a fact's MLP trace: a second edit of the same facts on
# the same weights (a batch re-run with other settings, a fact after the first) reads it back
_TRACES: dict[tuple, tuple[np.ndarray, int, float, float]] = {}
_TRACES_KEPT = 10_000


def _mlp_trace(model: Any, fp: str, fact: Fact, seed: int, subjects: list[str]) -> tuple[np.ndarray, int, float, float]:
    """(restored p(target) per [layer, position] from an MLP-only trace, the last subject token, p clean, p
    corrupted) of `fact`, traced once per weights, seed and noise subjects in this process."""
    from excise.locate.causal_trace import TraceMeta, causal_trace

    key = (fp, fact.subject, fact.relation, fact.target, fact.prompt, seed, tuple(subjects))
    if key not in _TRACES:
        if len(_TRACES) >= _TRACES_KEPT:
            _TRACES.clear()
        loc = causal_trace(model, fact, kinds=("mlp",), seed=seed, subjects=subjects)
        meta = TraceMeta.of(loc)
        _TRACES[key] = (loc.scores["mlp"].float().cpu().numpy(), loc.subject[1] - 1, meta.p_clean, meta.p_corrupt)
    return _TRACES[key]


def edit_site(model: Any, facts: Sequence[Fact], seed: int = 0,
              min_restored: float = MIN_RESTORED) -> EditSite:
    """Trace each fact's MLPs and pick the (layer, position role) to edit; see the module docstring.

    Returns an EditSite (the layer, the position role, the restored-share curves and the reason).
    Cost: one MLP-only causal trace per fact (about 0.1 s on a 3-layer model on one CPU thread), kept for a later
    call on the same weights, facts, seed and subjects (`_mlp_trace`).
    """
    facts = list(facts)
    if not facts:
        raise ValueError("edit_site needs at least one fact")
    n_layers = model.cfg.n_layers
    if n_layers < 2:
        raise ValueError("edit_site needs a model of at least two layers; the model has one")
    t0 = time.perf_counter()
    subjects = [f.subject for f in facts]          # one noise unit for all (ROME's), as `excise locate` does
    rows: dict[str, list[np.ndarray]] = {"subject_last": [], "prompt_last": []}
    clean, corrupt = [], []
    fp = model_fingerprint(model)
    for f in facts:
        mlp, last_subject, p_clean_f, p_corrupt_f = _mlp_trace(model, fp, f, seed, subjects)
        for role, column in (("subject_last", last_subject), ("prompt_last", mlp.shape[1] - 1)):
            curve = np.full(n_layers, np.nan)
            layers = list(candidate_layers(role, n_layers))
            curve[layers] = mlp[layers, column]
            rows[role].append(curve)
        clean.append(p_clean_f)
        corrupt.append(p_corrupt_f)
    p_clean, p_corrupt = float(np.mean(clean)), float(np.mean(corrupt))
    damage = max(p_clean - p_corrupt, 1e-9)
    curves = {role: np.stack(r).mean(0) for role, r in rows.items()}
    shares = {role: float((np.nanmax(c) - p_corrupt) / damage) for role, c in curves.items()}
    s, p = shares["subject_last"], shares["prompt_last"]
    numbers = (f"restored share of the noising damage: prompt's last token {p:.0%} (late layers), last subject "
               f"token {s:.0%}; threshold {min_restored:.0%}")
    if p >= min_restored:
        role, why = "prompt_last", "the MLP at the prompt's last token restores the answer"
    elif s >= min_restored:
        role, why = "subject_last", "only the MLP at the last subject token restores the answer"
    else:
        role, why = "prompt_last", "neither position restores much; the prompt's last token (measured the better site)"
        warnings.warn(f"the causal trace localizes these facts poorly: {numbers}, both below; the model may "
                      "retrieve them through attention rather than an MLP (`excise locate` shows where). Editing at "
                      "the prompt's last token, where deletions measured best (excise bench sites)", stacklevel=2)
    curve = curves[role]
    layer = int(np.nanargmax(curve))
    peaks = [int(np.nanargmax(r)) for r in rows[role]]
    agree = Counter(peaks)[layer]
    reason = (f"{why}; {numbers}; layer {layer} has the largest mean restored p(target) over {len(facts)} facts "
              f"({agree} of {len(facts)} peak there)")
    return EditSite(layer=layer, scores=_listed(curve), peaks=peaks, p_clean=p_clean,
                    p_corrupt=p_corrupt, restored=shares[role], seconds=time.perf_counter() - t0, reason=reason,
                    position=role, roles={r: _listed(c) for r, c in curves.items()}, shares=shares)


def _listed(curve: np.ndarray) -> list[float | None]:
    return [None if np.isnan(x) else float(x) for x in curve]
