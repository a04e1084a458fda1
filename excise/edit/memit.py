"""MEMIT: many facts in one batch, the change spread over a range of MLP layers (Meng et al. 2023).

1. For each fact, the target hidden state z_i = h_i + delta_i at the last
   layer L of the range, at the last subject token (`rome.compute_v` with
   the objective: a change of the MLP output at L is a change of h at L).
2. For each layer l of the range in order: keys K (the MLP hidden states at
   the last subject token, averaged over prefixes) and the residual still
   missing at L, R = z - h_L now, spread as R / (layers left); then the
   least-squares update with the keys' second moment as a prior:
       Delta = (lambda C + K K^T)^-1 K R_l^T      (W in x @ W form, [d_mlp, d_model])
   With `null_space` (AlphaEdit, Fang et al. 2025) the update is projected
   onto the null space of the keys to preserve K_0 (the keys at every token
   of the `preserve` facts' prompts, as AlphaEdit takes every token of its
   text, or C when none are given):
       Delta = P (K K^T P + lambda_n I)^-1 K R_l^T,  P = U_0 U_0^T,
   U_0 the eigenvectors of K_0 K_0^T with eigenvalues below null_threshold * max.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from excise.edit.covariance import second_moment
from excise.edit.record import EditRecord, recording
from excise.edit.rome import RomeConfig, _default_sample, _prompts, _rows, compute_v, layer_keys
from excise.facts import Fact
from excise.models import linear
from excise.scoring import pad_batch


@dataclass(frozen=True)
class MemitConfig:
    layers: tuple[int, ...]
    objective: str = "erase"
    mom2_weight: float = 1e4          # lambda; MEMIT's published mom2_update_weight is 15000
    null_space: bool = False          # AlphaEdit's projection
    null_threshold: float = 1e-2      # eigenvalues of C below threshold * max count as null
    null_ridge: float = 1.0           # lambda_n in the AlphaEdit solve
    v: RomeConfig | None = None       # settings of compute_v (layer is set to the last of `layers`)
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.layers or list(self.layers) != sorted(set(self.layers)):
            raise ValueError(f"layers must be a non-empty increasing range, got {self.layers}")


@torch.no_grad()
def _keys_and_hidden(model: Any, facts: Sequence[Fact], layer: int, last: int, n_prefixes: int):
    """Per fact: mean MLP key at `layer` and mean residual after block `last`, at the last subject token."""
    keys, hidden = [], []
    device = next(iter(model.parameters())).device
    store = {}

    def keep(name):
        def hook(act, hook):
            store[name] = act
        return hook

    for f in facts:
        rows = _rows(model, f, _prompts(f, n_prefixes))
        tokens, _ = pad_batch([r[0] for r in rows], model.tokenizer.pad_token_id or 0)
        with model.hooks(fwd_hooks=[(f"blocks.{layer}.mlp.hook_post", keep("k")),
                                    (f"blocks.{last}.hook_resid_post", keep("h"))]):
            model(tokens.to(device), stop_at_layer=last + 1)
        subj = torch.tensor([r[1] for r in rows], device=device)
        batch = torch.arange(len(rows), device=device)
        keys.append(store["k"][batch, subj].mean(0))
        hidden.append(store["h"][batch, subj].mean(0))
    return torch.stack(keys, 1), torch.stack(hidden, 1)          # [d_mlp, n], [d_model, n]


def _token_keys(model: Any, facts: Sequence[Fact], layer: int) -> Tensor:
    """MLP keys at `layer` at every token of the facts' prompts (+ targets): [d_mlp, n_tokens]."""
    return layer_keys(model, [r for f in facts for r in _rows(model, f, [f.prompt])], layer, subject_only=False).T


def memit(model: Any, facts: Iterable[Fact], config: MemitConfig, sample: list[str] | None = None,
          preserve: Iterable[Fact] = ()) -> EditRecord:
    """Edit all `facts` at once over `config.layers`; returns one EditRecord.

    `preserve`: facts whose keys (every token of their prompts) the null-space projection keeps
    (with `config.null_space`). Cost: one `compute_v` per fact, then per layer
    one forward per fact and a d_mlp x d_mlp solve.
    """
    facts = list(facts)
    preserve = list(preserve)
    if not facts:
        raise ValueError("memit needs at least one fact")
    n_layers = model.cfg.n_layers
    for l in config.layers:
        if not 0 <= l < n_layers:
            raise ValueError(f"layer {l} is out of range: the model has {n_layers} layers (0..{n_layers - 1})")
    last = config.layers[-1]
    if last == n_layers - 1:
        raise ValueError(f"the range ends at the last block ({last}); an edit at the subject's position "
                         "there cannot reach the prediction. End the range lower.")
    vcfg = replace(config.v or RomeConfig(layer=last, objective=config.objective), layer=last,
                   objective=config.objective)
    sample = sample if sample is not None else _default_sample(model)
    Cs = {l: second_moment(model, l, sample) for l in config.layers}
    views = {l: linear(model, l, "mlp.out") for l in config.layers}
    deltas = []
    for f in tqdm(facts, desc="memit: target states", disable=not config.progress or len(facts) < 5):
        k = _keys_and_hidden(model, [f], last, last, vcfg.n_prefixes)[0][:, 0]
        deltas.append(compute_v(model, f, vcfg, k)[0])
    _, h0 = _keys_and_hidden(model, facts, last, last, vcfg.n_prefixes)
    z = h0 + torch.stack(deltas, 1)                                  # [d_model, n]
    hyper = asdict(config) | {"v": asdict(vcfg)}
    with recording(model, f"memit_{config.objective}", hyper, facts=facts,
                   scope=[v.weight for v in views.values()]) as box, torch.no_grad():
        for i, l in enumerate(config.layers):
            K, h = _keys_and_hidden(model, facts, l, last, vcfg.n_prefixes)
            R = (z - h) / (len(config.layers) - i)                  # [d_model, n]
            C = Cs[l].to(K.device, K.dtype)
            if config.null_space:
                if preserve:
                    K0 = _token_keys(model, preserve, l)
                    evals, evecs = torch.linalg.eigh(K0 @ K0.T / K0.shape[1])
                else:
                    evals, evecs = torch.linalg.eigh(C)
                null = evecs[:, evals < config.null_threshold * evals.max()]
                P = null @ null.T
                A = K @ K.T @ P + config.null_ridge * torch.eye(K.shape[0], device=K.device)
                update = P @ torch.linalg.solve(A, K @ R.T)
            else:
                update = torch.linalg.solve(config.mom2_weight * C + K @ K.T, K @ R.T)   # [d_mlp, d_model]
            views[l].W.add_(update.to(views[l].W.dtype))
    record: EditRecord = box["record"]
    return record
