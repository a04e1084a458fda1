"""MEMIT: many facts in one batch, the change spread over a range of MLP layers (Meng et al. 2023),
and AlphaEdit's null-space projection with its sequential cache (Fang et al. 2025).

1. For each fact, the target hidden state z_i = h_i + delta_i at the last
   layer L of the range, at the edit position (`MemitConfig.position`: the
   last subject token, MEMIT's, or the prompt's last token; `rome.compute_v`
   with the objective: a change of the MLP output at L is a change of h at L).
2. For each layer l of the range in order: keys K (the MLP hidden states at
   the edit position, averaged over prefixes and the position's prompt
   families, see `RomeConfig.families`) and the residual still
   missing at L, R = z - h_L now, spread as R / (layers left); then the
   least-squares update with the keys' second moment as a prior
   (`memit_update`, memit_main.py:191-201):
       Delta = (lambda C + K K^T)^-1 K R_l^T      (W in x @ W form, [d_mlp, d_model])
3. With `null_space` (AlphaEdit) the update lives in the null space of the
   keys to preserve (`null_space_projector`, `alphaedit_update`;
   AlphaEdit_main.py:129-132, evaluate.py `get_project`):
       P = U_0 U_0^T,  U_0 the singular vectors of C_0 with singular values below the threshold
       Delta = (P (K K^T + cache) + L2 I)^-1 P K R_l^T
   C_0 is the second moment of the keys at every token of the `preserve`
   facts' prompts (AlphaEdit takes every token of Wikipedia text), or C when
   none are given. `cache` is the sum of K_m K_m^T over earlier edits made
   with the same `AlphaEditState` (keys recomputed on the edited model after
   each write, AlphaEdit_main.py:146-148), so a later edit keeps the earlier
   edits' outputs; without a state it is zero.

Sequential AlphaEdit, one fact per request:

    state = AlphaEditState.build(model, config, preserve=preserve)   # P once, on the unedited model
    seq = memit_sequence(model, facts, config, state=state)          # each edit reads and grows the cache
    seq.undo()                                                       # weights and cache back, last first
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from excise.edit.covariance import mlp_keys, second_moment
from excise.edit.rank_one import POSITIONS, inverse_second_moment
from excise.edit.record import EditRecord, recording
from excise.edit.rome import DELETION_OBJECTIVE, RomeConfig, _at, _prompts, _rows, compute_v, layer_keys, resolve_sample
from excise.edit.sequence import EditSequence, sequence
from excise.facts import Fact
from excise.scoring import pad_batch
from excise.weights import device_of, fingerprint, linear

THRESHOLD_MODES = ("absolute", "relative")


@dataclass(frozen=True)
class MemitConfig:
    layers: tuple[int, ...]
    objective: str = DELETION_OBJECTIVE       # compute_v's objective (RomeConfig's default)
    # the edit position's role (rank_one.POSITIONS): "subject_last" is MEMIT's; "prompt_last" the prompt's last
    # token (excise.locate.edit_site picks it where the trace says the model retrieves there)
    position: str = "subject_last"
    mom2_weight: float = 1e4          # lambda; MEMIT's published mom2_update_weight is 15000 (GPT-J), 20000 (GPT-2 XL)
    null_space: bool = False          # AlphaEdit's projection
    # A direction is null when its singular value of C_0 (a per-token second moment E[k k^T]) is below
    # null_threshold ("absolute", AlphaEdit's rule: nullspace_threshold = 2e-2 in all its hparams) or below
    # null_threshold * the largest ("relative", excise's rule before the reference comparison, at 1e-2).
    # The defaults are AlphaEdit's (threshold 2e-2 absolute, L2 10); measured on the organism, layer 0,
    # C_0 from 600 preserve facts (4638 tokens), 100 sequential deletions (benchmarks/results/sequential.md):
    # - absolute 2e-2 keeps 197 of 512 directions, holding 0.3% of the preserved keys' energy and 5.6% of the
    #   deleted facts' keys'; relative 1e-2 keeps 474 holding 54% of the latter, a "null" space that is not
    #   null (one batch of 100: retain kept 0.03, benchmarks/results/edit.md);
    # - L2 10: efficacy 0.14, retain recall 0.98; L2 1: 0.75, 0.52; L2 0.1: 0.85, 0.29 (one run); plain
    #   sequential MEMIT (lambda 100, no projection) 0.88, 0.58. A smaller L2 buys efficacy at a retain cost
    #   plain MEMIT beats, so no measurement argues for leaving the reference's values: with them the null
    #   space keeps what it promises (retain) and the low efficacy says the key space has no room (the bench
    #   explains why). An absolute threshold is in the keys' units: check `AlphaEditState.summary()`.
    null_threshold: float = 2e-2
    null_threshold_mode: str = "absolute"
    null_ridge: float = 10.0          # L2 of AlphaEdit's solve; a write reaches |P k|^2 / (|P k|^2 + L2) at its key
    # Optimize each fact's value through the write as ROME does (compute_v with u = C^-1 k / (k . C^-1 k), the
    # direction a one-layer MEMIT write takes for one key), so prompts whose keys differ from the mean key get
    # the change the write will give them. Off: MEMIT's reference (a constant delta at every prompt). One layer,
    # no null space only. Measured on the foreign test models (tests/foreign.py, layer 0, lambda d_mlp / 9, 3
    # facts): request recall after 1.00 -> 0.33 (GPT-2), 0.33 -> 0.00 (Llama); other subjects kept 0.98 -> 0.92,
    # 1.00 -> 1.00. On the organism (layer 0, lambda 57, one fact each of 3 people) request recall stays 0.33
    # but paraphrase recall rises 0.33 -> 0.67 (9 prompts): a cost to re-measure on more facts.
    # `excise.methods.delete` turns it on.
    through_edit: bool = False
    v: RomeConfig | None = None       # settings of compute_v (layer is set to the last of `layers`)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {self.position!r}")
        if not self.layers or list(self.layers) != sorted(set(self.layers)):
            raise ValueError(f"layers must be a non-empty increasing range, got {self.layers}")
        if self.null_threshold_mode not in THRESHOLD_MODES:
            raise ValueError(f"null_threshold_mode must be one of {THRESHOLD_MODES}, got {self.null_threshold_mode!r}")
        if self.null_threshold <= 0:
            raise ValueError(f"null_threshold must be > 0, got {self.null_threshold}")
        if self.null_ridge < 0:
            raise ValueError(f"null_ridge must be >= 0, got {self.null_ridge}")
        if self.through_edit and (len(self.layers) > 1 or self.null_space):
            raise ValueError("through_edit models a one-layer write without null space (its direction C^-1 k); "
                             f"got layers {self.layers}, null_space {self.null_space}: use one layer, or turn it off")


# -- the maths ---------------------------------------------------------------------------------------------

def null_space_projector(
    C0: Float[Tensor, "d_in d_in"], threshold: float, mode: str = "absolute",
) -> Float[Tensor, "d_in d_in"]:
    """P = U_0 U_0^T over the singular vectors of C0 with singular values below `threshold` (absolute,
    AlphaEdit's `get_project`) or below `threshold * max` (relative); float64 SVD, C0's dtype out."""
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"mode must be one of {THRESHOLD_MODES}, got {mode!r}")
    U, S, _ = torch.linalg.svd(C0.double(), full_matrices=False)
    U0 = U[:, S < (threshold if mode == "absolute" else threshold * S.max())]
    return (U0 @ U0.T).to(C0.dtype)


def alphaedit_update(
    K: Float[Tensor, "d_in n"], R: Float[Tensor, "d_out n"], P: Float[Tensor, "d_in d_in"],
    cache: Float[Tensor, "d_in d_in"] | None, ridge: float,
) -> Float[Tensor, "d_in d_out"]:
    """AlphaEdit's update, (P (K K^T + cache) + ridge I)^-1 P K R^T, solved in float64. The solution lies
    in P's range (it is P (...) / ridge); `cache` is the earlier edits' sum of K_m K_m^T (or None)."""
    K64, P64 = K.double(), P.double()
    A = K64 @ K64.T + (cache.double() if cache is not None else 0.0)
    eye = torch.eye(K.shape[0], dtype=torch.float64, device=K.device)
    return torch.linalg.solve(P64 @ A + ridge * eye, P64 @ K64 @ R.double().T).to(_at_least_float32(K))


def memit_update(
    K: Float[Tensor, "d_in n"], R: Float[Tensor, "d_out n"], C: Float[Tensor, "d_in d_in"], weight: float,
) -> Float[Tensor, "d_in d_out"]:
    """MEMIT's update, (weight C + K K^T)^-1 K R^T, solved in float64 as memit_main.py does."""
    K64 = K.double()
    return torch.linalg.solve(weight * C.double() + K64 @ K64.T, K64 @ R.double().T).to(_at_least_float32(K))


def _at_least_float32(t: Tensor) -> torch.dtype:
    """The dtype an update of `t`'s model is kept in until written: float32 for a half-precision model."""
    return torch.promote_types(t.dtype, torch.float32)


# -- keys ------------------------------------------------------------------------------------------------

@torch.no_grad()
def _keys_and_hidden(model: Any, facts: Sequence[Fact], layer: int, last: int, n_prefixes: int,
                     position: str = "subject_last", families: Sequence[str] = ("request",)):
    """Per fact: mean MLP key at `layer` and mean residual after block `last`, at the edit `position` of the
    request prompt, its `n_prefixes` prefixed copies and the other `families`' templates."""
    keys, hidden = [], []
    device = device_of(model)
    for f in facts:
        rows = _rows(model, f, _prompts(f, n_prefixes, families))
        tokens, _ = pad_batch([r.tokens for r in rows], model.tokenizer.pad_token_id or 0)
        k, h = mlp_keys(model, tokens, layer, resid_after=last)
        at = torch.tensor(_at(rows, position), device=device)
        batch = torch.arange(len(rows), device=device)
        keys.append(k[batch, at].mean(0))
        hidden.append(h[batch, at].mean(0))
    return torch.stack(keys, 1), torch.stack(hidden, 1)          # [d_mlp, n], [d_model, n]


def _token_keys(model: Any, facts: Sequence[Fact], layer: int) -> Tensor:
    """MLP keys at `layer` at every token of the facts' prompts (+ targets): [d_mlp, n_tokens]."""
    return layer_keys(model, [r for f in facts for r in _rows(model, f, [f.prompt])], layer, None).T


def _preserved_moment(model: Any, layer: int, preserve: Sequence[Fact], sample: list[str] | None) -> tuple[Tensor, str]:
    """C_0 for the projector: E[k k^T] over every token of the preserve facts' prompts, else C of the sample."""
    if preserve:
        K0 = _token_keys(model, preserve, layer).double()
        return (K0 @ K0.T / K0.shape[1]).float(), f"{len(preserve)} preserve facts, {K0.shape[1]} tokens"
    sample = resolve_sample(model, sample, "AlphaEdit")
    return second_moment(model, layer, sample), f"second moment of {len(sample)} sample texts"


def _projectors(model: Any, config: MemitConfig, preserve: Sequence[Fact], sample: list[str] | None,
                stacklevel: int = 3) -> tuple[dict[int, Tensor], str]:
    """P per layer of the range, from the model as it is; warns where the null space is empty."""
    P, described = {}, ""
    for l in config.layers:
        C0, described = _preserved_moment(model, l, preserve, sample)
        P[l] = null_space_projector(C0, config.null_threshold, config.null_threshold_mode)
    empty = [l for l, p in P.items() if round(float(p.trace())) == 0]
    if empty:
        warnings.warn(f"the null space at layer(s) {empty} is empty: no singular value of C_0 ({described}) is "
                      f"below the {config.null_threshold_mode} threshold {config.null_threshold:g}, so the edit "
                      "changes nothing there; raise null_threshold", stacklevel=stacklevel)
    return P, described


def _weights_hash(model: Any, layers: Sequence[int]) -> str:
    h = hashlib.sha256()
    for l in layers:
        w = linear(model, l, "mlp.out").weight.detach().cpu().contiguous()
        h.update(w.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# -- AlphaEdit's state across sequential edits --------------------------------------------------------------

@dataclass
class AlphaEditState:
    """What sequential AlphaEdit carries between edits: per layer the projector P (computed once, on the
    unedited model) and the keys of every edit made with this state (recomputed on the model after that
    edit's write), whose sum of K K^T is AlphaEdit's `cache_c`.

    Undo: `state.undo(record)` reverts the record's weights and removes its keys, last edit first (as the
    records themselves require), so the state is again exactly what it was before that edit. A record
    undone by `record.undo()` alone leaves its keys in the cache; the next `memit(..., state=state)` sees
    that the edited weights are not the ones this state last wrote and refuses (as it does after any other
    change of those weights), naming `state.undo(record)` as the fix.
    """

    layers: tuple[int, ...]
    threshold: float
    threshold_mode: str
    P: dict[int, Tensor]
    source: dict[str, Any]                       # what P was computed from (model fingerprint, C_0, null dims)
    keys: list[dict[int, Tensor]] = field(default_factory=list)        # per edit, per layer: [d_mlp, n]
    records: list[EditRecord] = field(default_factory=list, repr=False)
    # hash of the edited layers' W_out when built, then after each edit
    hashes: list[str] = field(default_factory=list, repr=False)

    @classmethod
    @torch.no_grad()
    def build(cls, model: Any, config: MemitConfig, preserve: Iterable[Fact] = (),
              sample: list[str] | None = None) -> AlphaEditState:
        """P for each of `config.layers` from the unedited model (see the module docstring), an empty cache.
        Cost: one forward per preserve fact per layer (or the sample's covariance), one d_mlp SVD per layer."""
        P, described = _projectors(model, config, list(preserve), sample)
        null_dims = {l: round(float(p.trace())) for l, p in P.items()}
        source = {"model_fingerprint": fingerprint(model), "C0": described, "null_dims": null_dims,
                  "d_mlp": int(model.cfg.d_mlp)}
        return cls(tuple(config.layers), config.null_threshold, config.null_threshold_mode, P, source,
                   hashes=[_weights_hash(model, config.layers)])

    def cache(self, layer: int) -> Tensor:
        """AlphaEdit's cache_c at `layer`: the sum of K K^T over the edits so far (float64)."""
        P = self.P[layer]
        if not self.keys:
            return torch.zeros(P.shape, dtype=torch.float64, device=P.device)
        K = torch.cat([k[layer] for k in self.keys], 1).double()
        return K @ K.T

    def all_keys(self, layer: int) -> Tensor:
        """Every edited fact's key at `layer`, in edit order: [d_mlp, n_facts]."""
        if not self.keys:
            return self.P[layer].new_zeros(len(self.P[layer]), 0)
        return torch.cat([k[layer] for k in self.keys], 1)

    def check(self, model: Any, config: MemitConfig) -> None:
        if tuple(config.layers) != self.layers or config.null_threshold != self.threshold or \
                config.null_threshold_mode != self.threshold_mode:
            raise ValueError(f"this AlphaEditState was built for layers {self.layers} with the {self.threshold_mode} "
                             f"threshold {self.threshold:g}, the config asks for layers {tuple(config.layers)} with "
                             f"the {config.null_threshold_mode} threshold {config.null_threshold:g}; build the state "
                             "from the same config")
        if _weights_hash(model, self.layers) != self.hashes[-1]:
            raise ValueError(
                f"the model's W_out at layer(s) {list(self.layers)} is not what this AlphaEditState last saw "
                f"({len(self.keys)} edit(s) made with it): an edit made with it was undone outside it, or another "
                "edit changed those weights since, so its cache no longer matches the model. Undo an edit made "
                "with the state through `state.undo(record)`; after other edits, build a new state")

    def add(self, model: Any, record: EditRecord, keys: dict[int, Tensor]) -> None:
        self.keys.append({l: k.detach() for l, k in keys.items()})
        self.records.append(record)
        self.hashes.append(_weights_hash(model, self.layers))

    def undo(self, record: EditRecord, model: Any = None) -> None:
        """Revert `record` (the last edit made with this state) and drop its keys from the cache."""
        if not self.records:
            raise ValueError("this AlphaEditState holds no edit to undo")
        last = self.records[-1]
        if record is not last and (record.before_hash, record.after_hash) != (last.before_hash, last.after_hash):
            known = any(r is record for r in self.records)
            raise ValueError("this record is " + ("not the last edit made with this state; undo the later ones first, "
                                                  "last first" if known else "not an edit made with this state"))
        model = model if model is not None else record.model
        now = _weights_hash(model, self.layers)
        if now == self.hashes[-1]:
            record.undo(model)
            now = _weights_hash(model, self.layers)
        if now != self.hashes[-2]:                      # neither undone by this call nor by record.undo() before
            raise ValueError("the edited layers' weights are neither those after this record nor those before it: "
                             "something else changed them since; build a new state")
        self.keys.pop()
        self.records.pop()
        self.hashes.pop()

    def null_energy(self, layer: int, K: Tensor | None = None) -> Tensor:
        """Per key, the share of |k|^2 in the null space, |P k|^2 / |k|^2 (default: every edited key)."""
        K = (self.all_keys(layer) if K is None else K).double()
        P = self.P[layer].double().to(K.device)
        return (P @ K).norm(dim=0) ** 2 / K.norm(dim=0).clamp_min(1e-12) ** 2

    def summary(self) -> str:
        dims = ", ".join(f"L{l}: {n} of {self.source['d_mlp']}" for l, n in self.source["null_dims"].items())
        return (f"AlphaEditState: null space ({self.threshold_mode} threshold {self.threshold:g}, C_0 from "
                f"{self.source['C0']}) {dims}; {len(self.keys)} edit(s), "
                f"{sum(next(iter(k.values())).shape[1] for k in self.keys)} key(s) in the cache")

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"AlphaEditState(layers={self.layers}, null_dims={self.source['null_dims']}, edits={len(self.keys)})"


# -- the edit ----------------------------------------------------------------------------------------------

def memit(model: Any, facts: Iterable[Fact], config: MemitConfig, sample: list[str] | None = None,
          preserve: Iterable[Fact] = (), state: AlphaEditState | None = None,
          C: dict[int, Tensor] | None = None) -> EditRecord:
    """Edit all `facts` at once over `config.layers`; returns one EditRecord.

    `preserve`: facts whose keys (every token of their prompts) the null-space projection keeps
    (with `config.null_space`). `state`: sequential AlphaEdit (see `AlphaEditState`): P and the cache of
    earlier edits come from it, and this edit's keys, recomputed after the write, are added to it
    (the preserve facts went into the state). `C`: the keys' second moment per layer (plain
    MEMIT; pass the unedited model's across sequential edits, as for `rome`). Cost: one `compute_v` per
    fact, then per layer one forward per fact and a d_mlp x d_mlp solve; with a state, one more forward
    per fact and layer for the keys after the write.
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
    if last == n_layers - 1 and config.position == "subject_last":
        raise ValueError(f"the range ends at the last block ({last}); an edit at the subject's position "
                         "there cannot reach the prediction. End the range lower, or edit at position='prompt_last'.")
    if state is not None:
        if not config.null_space:
            raise ValueError("an AlphaEditState carries the null space: pass a config with null_space=True")
        if preserve:
            raise ValueError("with a state, the preserved keys are the state's: pass preserve= to "
                             "AlphaEditState.build, not to memit")
        state.check(model, config)
    vcfg = replace(config.v or RomeConfig(layer=last, objective=config.objective), layer=last,
                   objective=config.objective, position=config.position)
    where = {"position": vcfg.position, "families": vcfg.key_families}
    if config.null_space:
        P = state.P if state is not None else _projectors(model, config, preserve, sample)[0]
    else:
        if C is not None and set(config.layers) - set(C):
            raise ValueError(f"C has no second moment for layer(s) {sorted(set(config.layers) - set(C))}: pass one per "
                             "layer of the range ({layer: C}), or leave C out to compute them")
        sample = sample if C is not None else resolve_sample(model, sample, "MEMIT")
        C = {l: C[l] if C is not None else second_moment(model, l, sample) for l in config.layers}
    views = {l: linear(model, l, "mlp.out") for l in config.layers}
    deltas = []
    C_inv = inverse_second_moment(C[last].to(dtype=torch.float32), 0.0) if config.through_edit else None
    for f in tqdm(facts, desc="memit: target states", disable=not config.progress or len(facts) < 5):
        k = _keys_and_hidden(model, [f], last, last, vcfg.n_prefixes, **where)[0][:, 0]
        u = None
        if C_inv is not None:
            u = C_inv.to(k.device) @ k.float()
            u = u / (u @ k.float())
        deltas.append(compute_v(model, f, vcfg, k, u)[0])
    _, h0 = _keys_and_hidden(model, facts, last, last, vcfg.n_prefixes, **where)
    z = h0 + torch.stack(deltas, 1)                                  # [d_model, n]
    hyper = asdict(config) | {"v": asdict(vcfg)}
    with recording(model, f"memit_{config.objective}", hyper, facts=facts,
                   scope=[v.weight for v in views.values()]) as box, torch.no_grad():
        for i, l in enumerate(config.layers):
            K, h = _keys_and_hidden(model, facts, l, last, vcfg.n_prefixes, **where)
            R = (z - h) / (len(config.layers) - i)                  # [d_model, n]
            if config.null_space:
                cache = state.cache(l).to(K.device) if state is not None else None
                update = alphaedit_update(K, R, P[l].to(K.device), cache, config.null_ridge)
            else:
                update = memit_update(K, R, C[l].to(K.device), config.mom2_weight)   # [d_mlp, d_model]
            W = views[l].W
            W.copy_(W.float() + update.float())        # summed in float32, rounded to the weight's dtype once
        # AlphaEdit_main.py:146-148: the keys of this batch on the edited model, for the next edit's cache
        new_keys = {l: _keys_and_hidden(model, facts, l, last, vcfg.n_prefixes, **where)[0] for l in config.layers} \
            if state is not None else {}
    record: EditRecord = box["record"]
    if state is not None:
        state.add(model, record, new_keys)
        record.meta["alphaedit"] = {"edit": len(state), "null_dims": state.source["null_dims"],
                                    "state_built_on": state.source["model_fingerprint"]}
    return record


def memit_sequence(model: Any, facts: Iterable[Fact], config: MemitConfig, state: AlphaEditState | None = None,
                   preserve: Iterable[Fact] = (), sample: list[str] | None = None,
                   after_each: Callable[[int, EditRecord], dict[str, Any] | None] | None = None,
                   progress: bool = True) -> EditSequence:
    """One `memit` per fact, in order (see `sequence`). With `config.null_space`: sequential AlphaEdit,
    every edit through one `AlphaEditState` (built here from `preserve`/`sample` unless given), and the
    returned sequence's `undo()` goes through it. Without: plain MEMIT with the unedited model's C.

    Returns the EditSequence (one EditRecord per fact). Cost: the state (one forward per preserve fact
    per layer and a d_mlp SVD) or C per layer (a pass over the sample), then one `memit` per fact.
    """
    if config.null_space:
        state = state if state is not None else AlphaEditState.build(model, config, preserve, sample)
        return sequence(model, facts, lambda m, f: memit(m, [f], config, state=state), after_each, progress,
                        state=state)
    if state is not None:
        raise ValueError("an AlphaEditState needs a config with null_space=True")
    sample = resolve_sample(model, sample, "MEMIT")
    C = {l: second_moment(model, l, sample) for l in config.layers}
    return sequence(model, facts, lambda m, f: memit(m, [f], config, C=C), after_each, progress)
