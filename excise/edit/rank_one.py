"""Rank-one writes into an MLP output matrix (the maths of ROME's update).

`rank_one_update` is the closed form: the smallest change of W (in the
metric C) after which key k maps to value v. `planted` uses it to write a
new fact at a chosen MLP layer, the ground truth that locate methods are
checked against; weights are restored when the context exits.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from excise.components import hook_name
from excise.edit.covariance import mlp_keys
from excise.facts import Fact, tokenize_prompt
from excise.weights import device_of, linear

# Where a rank-one edit reads its key and writes its value, as a role a prompt's tokens play:
# "subject_last", the last token of the subject (ROME's); "prompt_last", the prompt's last token (where the
# answer is read out; a model whose trace peaks there retrieves at the end of the prompt, issue 25).
POSITIONS = ("subject_last", "prompt_last")
_ALIASES = {"last_subject": "subject_last", "last": "prompt_last"}     # `planted`'s earlier names


def check_position(position: str) -> str:
    """The role `position` names (see POSITIONS; 'last_subject' and 'last' are accepted as aliases)."""
    role = _ALIASES.get(position, position)
    if role not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
    return role


def position_index(role: str, last_subject: int, last_prompt: int) -> int:
    """The token index a role names in one prompt."""
    return last_subject if check_position(role) == "subject_last" else last_prompt


def rank_one_update(
    W: Float[Tensor, "d_in d_out"], k: Float[Tensor, " d_in"], v: Float[Tensor, " d_out"],
    C_inv: Float[Tensor, "d_in d_in"] | None = None,
) -> Float[Tensor, "d_in d_out"]:
    """Returns W + u (v - W^T k)^T / (u . k) with u = C^-1 k: afterwards W_new^T k == v.

    Cost: one d_in x d_in matrix-vector product and one outer product; no model call.
    """
    u = k if C_inv is None else C_inv @ k           # the whitened key (C = I: minimum-norm change)
    denom = u @ k
    if not torch.isfinite(denom) or denom.abs() < 1e-12:
        raise ValueError("the key is (numerically) zero; a rank-one write needs a non-zero key")
    return W + torch.outer(u, v - W.T @ k) / denom


def inverse_second_moment(C: Float[Tensor, "d d"], ridge: float) -> Float[Tensor, "d d"]:
    """(C + ridge * mean(diag C) * I)^-1, the metric of the rank-one update.

    ROME inverts C as it is (`torch.inverse(mom2.moment())`, rome/compute_u.py:51-53): ridge 0. With
    ridge 0 and a C that is numerically singular (a sample of fewer tokens than d, or neurons that never
    fire) the inverse amplifies noise along the null directions: this warns, and raises when the inverse
    is not finite.
    """
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    d = C.shape[0]
    C_reg = C + ridge * C.diagonal().mean() * torch.eye(d, device=C.device, dtype=C.dtype)
    if ridge == 0:
        evals = torch.linalg.eigvalsh(C.double())
        floor = float(evals.max()) * torch.finfo(C.dtype).eps     # condition number above 1 / eps
        rank = int((evals > floor).sum())
        if rank < d:
            warnings.warn(f"the key second moment C is numerically singular (rank {rank} of {d} at {C.dtype} "
                          f"precision; its smallest eigenvalue is {float(evals.min()):.3g}, its largest "
                          f"{float(evals.max()):.3g}) and ridge is 0 (ROME's): the update's direction C^-1 k is "
                          "noise along the null directions. Estimate C on more text (many more tokens than "
                          f"d_mlp = {d}) or pass ridge > 0 (excise's default 1e-2)", stacklevel=3)
    try:
        C_inv = torch.linalg.inv(C_reg)
    except torch.linalg.LinAlgError as e:
        raise ValueError(f"the key second moment C ({d}x{d}) is singular with ridge={ridge}: estimate it on "
                         "more text or pass ridge > 0 (excise's default 1e-2)") from e
    if not torch.isfinite(C_inv).all():
        raise ValueError(f"inverting the key second moment C ({d}x{d}) with ridge={ridge} gave non-finite "
                         "values: estimate C on more text or pass ridge > 0 (excise's default 1e-2)")
    return C_inv


def _mlp_key(model: Any, tokens: Tensor, layer: int, position: int) -> Tensor:
    return mlp_keys(model, tokens[None], layer)[0, position].clone()


def _optimize_value(model: Any, tokens: Tensor, layer: int, position: int, target_id: int,
                    steps: int, lr: float, stop_prob: float) -> Tensor:
    """The change of the MLP output at (layer, position) that makes target_id the next token."""
    last = tokens.shape[0] - 1
    delta = torch.zeros(model.cfg.d_model, device=tokens.device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)

    def add(act, hook):
        act = act.clone()
        act[0, position] = act[0, position] + delta
        return act

    with torch.enable_grad():
        for _ in range(steps):
            with model.hooks(fwd_hooks=[(hook_name("mlp", layer), add)]):
                logp = model(tokens[None])[0, last].float().log_softmax(-1)[target_id]
            if logp.exp().item() >= stop_prob:
                break
            (delta.grad,) = torch.autograd.grad(-logp, [delta])   # leaves the model's .grad alone
            opt.step()
    return delta.detach()


def _position(pt, position: str | int) -> int:
    n_pos = len(pt.tokens)
    index = position_index(position, pt.last_subject, n_pos - 1) if isinstance(position, str) else position
    if not isinstance(index, int) or not 0 <= index < n_pos:
        raise ValueError(f"position must be one of {POSITIONS} or an index in 0..{n_pos - 1}, got {position!r}")
    return index


@torch.no_grad()
def key_second_moment(
    model: Any, layer: int, facts: Sequence[Fact], position: str = "subject_last", ridge: float = 1e-2,
) -> Float[Tensor, "d_mlp d_mlp"]:
    """E[k k^T] of MLP keys at `layer` over the facts' request prompts, plus ridge * mean(diag) * I.

    The metric of ROME's update: writing along C^-1 k changes the output of
    keys like k (this subject) and as little as possible of the typical key.
    Returns the [d_mlp, d_mlp] matrix. Cost: one forward per fact (stopped after `layer`).
    """
    if not facts:
        raise ValueError("key_second_moment needs at least one fact")
    keys = []
    for f in facts:
        pt = tokenize_prompt(model, f)
        keys.append(_mlp_key(model, pt.tokens.to(device_of(model)), layer,
                             _position(pt, position)))
    K = torch.stack(keys).float()
    C = K.T @ K / len(keys)
    return C + ridge * C.diagonal().mean() * torch.eye(C.shape[0], device=C.device)


@contextmanager
def planted(
    model: Any, fact: Fact, layer: int, *, position: str | int = "subject_last",
    steps: int = 300, lr: float = 0.5, stop_prob: float = 0.9, C: Tensor | None = None,
) -> Iterator[dict[str, Any]]:
    """Within the block, the model states `fact` through a rank-one write at MLP `layer`.

    The key is the MLP hidden activation at `position` of the fact's prompt
    ("subject_last" as in ROME, "prompt_last" for the prompt's last token, or
    an index); the value is that position's MLP output plus an optimized change
    (Adam on the output, `steps` at `lr`) that makes the target the top next
    token (until its probability reaches `stop_prob`). With `C` (see
    `key_second_moment`) the write is whitened as in ROME, so it stays
    specific to this key. Yields {"key", "value", "delta_norm", "p_target"};
    the weights are restored on exit, exception or not.
    Cost: one forward for the key, then up to `steps` forward + backward passes on the one prompt.
    """
    pt = tokenize_prompt(model, fact)
    device = device_of(model)
    tokens = pt.tokens.to(device)
    view = linear(model, layer, "mlp.out")
    position = _position(pt, position)
    k = _mlp_key(model, tokens, layer, position)
    delta = _optimize_value(model, tokens, layer, position, pt.target_ids[0], steps, lr, stop_prob)
    original = view.weight.detach().clone()
    try:
        with torch.no_grad():
            W = view.W
            v = W.T @ k + delta          # value = old output of this key + the change
            W.copy_(rank_one_update(W, k, v, None if C is None else torch.linalg.inv(C)))
            p = model(tokens[None])[0, -1].float().softmax(-1)[pt.target_ids[0]]
        yield {"key": k, "value": v, "delta_norm": float(delta.norm()), "p_target": float(p)}
    finally:
        with torch.no_grad():
            view.weight.copy_(original)
