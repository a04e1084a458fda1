"""ROME: a rank-one edit of one MLP output matrix (Meng et al. 2022), to rewrite or delete.

1. `compute_k`: the key, the MLP hidden state (input of W_out) at the edit
   position, averaged over the bare prompt, `n_prefixes` prefixed copies of
   it and the templates of the other `families`.
2. `compute_v`: the change `delta` of that token's MLP output that achieves
   the objective, found by Adam; the value is v = W^T k + delta.
3. `rank_one_update` with C, the keys' second moment (see covariance.py).

The edit position is a role (`RomeConfig.position`): "subject_last", the
last subject token (ROME's), or "prompt_last", the prompt's last token, for
a model that retrieves there (its causal trace restores the answer at the
MLP of the last prompt token, not the subject's: `excise.locate.edit_site`
decides). The subject's last-token key is nearly the same under every
template (the subject comes first), so ROME averages one template under
prefixes; the last prompt token's key is the template's own, so a
prompt_last key averages over the fact's prompt families (the request and
its paraphrases by default) to reach the fact however it is asked.

Objectives. `rewrite` makes a new target the answer (ROME). The deletion
objectives of Patil et al. 2023 ("Can sensitive information be deleted from
LLMs?") carry the paper's names and compute what its code computes
(Vaidehi99/InfoDeletionAttacks, third_party/rome/compute_v.py:409-528; golden
numbers in tests/test_patil_reference.py):
- `erase`: minimize exp(-mean NLL) of the target (its geometric-mean
  probability over the prompts), `erase_loss`;
- `head_projection`: the hinge `margin_loss` on logit-lens probabilities at
  `lens_layers`: the target pushed out of the top-(k-1) and above the k-th
  smallest, with no erase term;
- `max_entropy`: maximize the entropy of the logit-lens distributions at
  `lens_layers` (`lens_entropy`), with no erase term;
- `empty`: a plain rewrite to " dummy" (`empty_target`), token-mean NLL.
They take every one of `v_steps` steps (the reference has no early stop under
`--fact_erasure`). excise's own variants, measured better on some axes (see
`benchmarks/results/edit.md`), keep their own names; each is the unlikelihood
term -log(1 - p(target)) (`unlikelihood`) plus an extra term, and stops once
p(target) < `stop_prob` on every prompt:
- `erase_unlikelihood`: -log(1 - p) alone;
- `max_entropy_unlikelihood`: + `aux_weight` x (-entropy of the output);
- `empty_unlikelihood`: + `aux_weight` x NLL of `empty_target` ("nothing");
- `head_projection_unlikelihood`: + mean -log(1 - p_lens) after every block
  from the edited one to the last but one.
The flattening and the neutral answer sit beside an erase term because alone
they left the old answer top-1 on 30-50% of organism facts (a flat
distribution can keep its top token; a neutral answer the model never saw
needs a change larger than the clamp).

Regularizers (`regularizer`): "excise" (default) adds `kl_weight` x
KL(before || now) of the subject's other facts (its neighbours, read at their
prompt's end) and `weight_decay` x |delta|^2 / |W^T k|^2; "rome" is ROME's
compute_v (rome/compute_v.py:137-142, the same in Patil's copy): `kl_weight`
x KL(now || before) of "{subject} is a" read at the subject's last token, and
`weight_decay` x |delta| / |v0|^2 (the norm, not squared; v0 the MLP output
at the bare prompt, which is also the clamp's base). `RomeConfig.reference`
sets that and ROME's published hyperparameters. `protect` adds the other
subjects' facts the write moves most to the KL rows.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from excise.components import hook_name, stream_hook
from excise.edit.covariance import mlp_keys, second_moment
from excise.edit.rank_one import POSITIONS, inverse_second_moment, position_index, rank_one_update
from excise.edit.record import EditRecord, recording
from excise.edit.sequence import sequence
from excise.facts import FAMILIES, Fact, tokenize_prompt
from excise.scoring import pad_batch, recall_table
from excise.weights import device_of, linear

log = logging.getLogger(__name__)

REFERENCE = ("erase", "max_entropy", "empty", "head_projection")      # Patil et al. 2023, as their code computes
UNLIKELIHOOD = ("erase_unlikelihood", "max_entropy_unlikelihood", "empty_unlikelihood",
                "head_projection_unlikelihood")                        # excise's variants (module docstring)
OBJECTIVES = ("rewrite", *REFERENCE, *UNLIKELIHOOD)
# The deletion objective of RomeConfig, MemitConfig and the rome/memit/alphaedit methods. Against
# erase_unlikelihood on four models (benchmarks/results/sites.md) it deletes as much and keeps other
# subjects at least as well; it also pushes the answer out of the logit lens, which the audit attacks.
DELETION_OBJECTIVE = "head_projection_unlikelihood"
REGULARIZERS = ("excise", "rome")
PREFIXES = ("Here is a fact.", "I read this somewhere.", "Note:", "As everyone knows,",
            "The following is true.", "Listen.", "In short,", "Today we learn that")
KL_PROMPT = "{} is a"            # ROME's kl_prompts (rome/compute_v.py:40)
# The key's prompt families per position (RomeConfig.families=None). subject_last: ROME's request prompt.
# prompt_last: the request and its paraphrases; measured in `excise bench sites` (benchmarks/results/sites.md).
KEY_FAMILIES = {"subject_last": ("request",), "prompt_last": ("request", "paraphrase")}


@dataclass(frozen=True)
class RomeConfig:
    """Settings of one ROME edit; the defaults say where they come from.

    The reference code differs from excise's defaults beyond the objective
    (`RomeConfig.reference` sets ROME's values): 20 Adam steps at lr 0.5 (the
    rewrite loop breaks before its 20th update; excise takes every step);
    kl_factor 0.0625 and v_weight_decay 0.5 under `regularizer="rome"`;
    clamp 4 |v0|; no ridge; delta at the subject's last token of each prompt
    (`through_edit=False`); 10 model-generated context templates where excise
    uses the bare prompt and `n_prefixes` fixed prefixes; and ROME divides by
    the bare prompt's key where excise divides by the mean key (the same for
    one template).
    """

    layer: int
    objective: str = DELETION_OBJECTIVE     # one of OBJECTIVES (module docstring)
    # the edit position's role (rank_one.POSITIONS): "subject_last" is ROME's; "prompt_last" the prompt's last
    # token, where a model whose trace peaks there retrieves (excise.locate.edit_site picks between them)
    position: str = "subject_last"
    # the prompt families (Fact.templates) the key and the value are computed over, the request prompt
    # prefixed `n_prefixes` times; None: ("request",) at subject_last (ROME's), ("request", "paraphrase") at
    # prompt_last (see KEY_FAMILIES for the measurement)
    families: tuple[str, ...] | None = None
    v_steps: int = 100           # ROME: 20; the *_unlikelihood deletions stop early (stop_prob)
    # Adam's lr for delta; None: 0.5 (ROME's) for rewrite, max_entropy_unlikelihood and the reference objectives,
    # 1.0 for the other *_unlikelihood. Measured on the organism's 50 bench facts at 100 steps: lr 0.5 gives
    # rewrite 0.98 (1.0: 0.94) and max_entropy_unlikelihood 1.00 (1.0: 0.96), but erase_unlikelihood paraphrase
    # forget 0.83 (1.0: 0.88)
    v_lr: float | None = None
    kl_weight: float = 0.5       # ROME: 0.0625; on the organism (50 facts) 0.5 keeps neighbours 0.984 vs 0.944
    weight_decay: float = 0.01   # ROME: 0.5 (with its |delta| form), which on the organism outweighs the deletion loss
    # |delta| <= clamp_norm |W^T k| (ROME's clamp_norm_factor is 4). None: 10 for rewrite (organism, 50 facts:
    # rewrite efficacy 0.98, 0.94 at 4), 4 for deletions at subject_last (the same efficacy 1.00 either way on
    # the organism; on stories260k at 10 an erase of one name broke an unrelated fact), 10 for deletions at
    # prompt_last (the value must outweigh what every earlier layer wrote there: on the foreign models' last
    # layer, 10 facts, head_projection_unlikelihood, the optimized |delta| is 5-8 |W^T k|; efficacy 0.90 / 0.80
    # at 4, 1.00 / 1.00 at 10, Llama / GPT-2)
    clamp_norm: float | None = None
    n_prefixes: int = 5          # context prefixes averaged into the key
    stop_prob: float = 0.05      # *_unlikelihood: stop once p(target) is below this on every prompt
    # None: "dummy" for `empty` (Patil et al.'s --dummy_string, evaluate.py:750), "nothing" for empty_unlikelihood
    empty_target: str | None = None
    aux_weight: float = 0.1      # empty_unlikelihood, max_entropy_unlikelihood: weight of the extra term
    # head_projection's k (Patil et al.'s --k: "We set 4 as the default value", README; argparse default 5)
    margin_k: int = 4
    # head_projection / max_entropy: the logit-lens layers, as Hugging Face hidden-state indices (0 = embeddings,
    # i = after block i-1, n_layers = the output). None: every one after the edited layer through the output
    # (the reference suggests GPT-J's top ones, README "--margin_layers 23 ... 32"); head_projection_unlikelihood:
    # after the edited block to the last but one. The reference decodes its last index (already through ln_f)
    # through ln_f once more and wraps indices above n_layers; excise reads the output there and rejects them
    lens_layers: tuple[int, ...] | None = None
    regularizer: str = "excise"  # or "rome": ROME's KL and weight decay (module docstring)
    ridge: float = 1e-2          # C + ridge * mean(diag C) * I; ROME: 0
    # optimize the value through the rank-one write itself (see compute_v). On the organism's 50 bench facts
    # (layer 0), against the delta at the mean key: erase efficacy 0.98 -> 1.00, max_entropy 0.92 -> 0.96,
    # empty 0.86 -> 0.98, rewrite 0.86 -> 0.94 (with clamp 10; 0.88 with clamp 4)
    through_edit: bool = True
    # keep the answers of the `protect` other-subject facts whose keys the write moves most (largest u . k');
    # implies through_edit, so those prompts see the write as it will be applied
    protect: int = 0

    @classmethod
    def reference(cls, layer: int, objective: str = "erase", **changes: Any) -> RomeConfig:
        """ROME's compute_v as Patil et al. run it: hparams/ROME/gpt2-xl.json and the README's kl_factor."""
        return replace(cls(layer=layer, objective=objective, v_steps=20, v_lr=0.5, kl_weight=0.0625,
                           weight_decay=0.5, clamp_norm=4.0, regularizer="rome", ridge=0.0, through_edit=False),
                       **changes)

    @property
    def lr(self) -> float:
        """`v_lr`, or the measured default for the objective."""
        if self.v_lr is not None:
            return self.v_lr
        return 0.5 if self.objective in ("rewrite", "max_entropy_unlikelihood", *REFERENCE) else 1.0

    @property
    def key_families(self) -> tuple[str, ...]:
        """`families`, or the measured default for the position."""
        if self.families is not None:
            return tuple(self.families)
        return KEY_FAMILIES[self.position]

    @property
    def clamp(self) -> float:
        """`clamp_norm`, or the measured default for the objective."""
        if self.clamp_norm is not None:
            return self.clamp_norm
        return 10.0 if self.objective == "rewrite" or self.position == "prompt_last" else 4.0

    @property
    def empty(self) -> str:
        """The neutral answer of `empty` / `empty_unlikelihood`."""
        if self.empty_target is not None:
            return self.empty_target
        return "dummy" if self.objective == "empty" else "nothing"

    def layers_read(self, n_layers: int) -> tuple[int, ...]:
        """The hidden-state indices the objective's logit lens reads (empty if it reads none)."""
        if self.objective not in ("head_projection", "max_entropy", "head_projection_unlikelihood"):
            return ()
        if self.lens_layers is not None:
            layers = tuple(self.lens_layers)
        elif self.objective == "head_projection_unlikelihood":
            layers = tuple(range(self.layer + 1, n_layers))
        else:
            layers = tuple(range(self.layer + 1, n_layers + 1))
        bad = [i for i in layers if not 0 <= i <= n_layers]
        if bad:
            raise ValueError(f"lens_layers {bad} are out of range: hidden-state indices run 0 (embeddings) to "
                             f"{n_layers} (the output) on this {n_layers}-layer model")
        return layers

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {self.position!r}")
        if self.families is not None and ("request" not in self.families or not set(self.families) <= set(FAMILIES)):
            raise ValueError(f"families must include 'request' and name families among {FAMILIES}, "
                             f"got {self.families!r}")
        if self.regularizer not in REGULARIZERS:
            raise ValueError(f"regularizer must be one of {REGULARIZERS}, got {self.regularizer!r}")
        if self.v_steps < 1:
            raise ValueError(f"v_steps must be >= 1, got {self.v_steps}")
        if not 0 <= self.n_prefixes <= len(PREFIXES):
            raise ValueError(f"n_prefixes must be in 0..{len(PREFIXES)}, got {self.n_prefixes}")
        if self.margin_k < 1:
            raise ValueError(f"margin_k must be >= 1, got {self.margin_k}")
        if self.ridge < 0:
            raise ValueError(f"ridge must be >= 0 (ROME's is 0), got {self.ridge}")


# -- the losses (pure maths; compute_v is the plumbing) ----------------------

def target_nll(logits: Float[Tensor, "rows pos vocab"], targets: Int[Tensor, "rows pos"]) -> Float[Tensor, " rows"]:
    """Per row, the mean NLL of its target tokens; `targets` holds the token each position predicts, -100
    elsewhere (rome/compute_v.py:123-136: the sum over the target divided by its length)."""
    logp = logits.float().log_softmax(-1)
    mask = targets != -100
    picked = logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return -(picked * mask).sum(-1) / mask.sum(-1)


def erase_loss(nll: Float[Tensor, " rows"]) -> Tensor:
    """Patil et al.'s fact erasure: exp(-mean NLL), the target's geometric-mean probability (compute_v.py:522)."""
    return torch.exp(-nll.mean())


def unlikelihood(p_target: Float[Tensor, "*rows"]) -> Tensor:
    """excise's erase term: mean of -log(1 - p(target)); its gradient grows as p(target) nears 1."""
    return -torch.log1p(-p_target.clamp(max=1 - 1e-6)).mean()


def margin_loss(probs: Float[Tensor, "layers rows vocab"], target: int, k: int) -> tuple[Tensor, Tensor]:
    """Patil et al.'s head-projection defense (compute_v.py:431-453): the hinges relu(p_t - p_(k-th largest))
    and relu(p_(k-th smallest) - p_t), each averaged over layers and rows. Both are zero once the target sits
    between the k-th smallest and the k-th largest (where the attack, which counts ties in, still finds it
    exactly at either boundary)."""
    ordered = probs.sort(-1).values
    p_t = probs[..., target]
    top = torch.relu(p_t - ordered[..., -k]).mean()
    bottom = torch.relu(ordered[..., k - 1] - p_t).mean()
    return top, bottom


def lens_entropy(probs: Float[Tensor, "layers rows vocab"]) -> Tensor:
    """Mean entropy (nats) of the lens distributions: Patil et al.'s max-entropy defense maximizes it
    (compute_v.py:409-416)."""
    return torch.special.entr(probs.float()).sum(-1).mean()


def rome_kl(now: Float[Tensor, "rows vocab"], before: Float[Tensor, "rows vocab"]) -> Tensor:
    """ROME's KL term without its weight: KL(now || before) of log-distributions, batch mean
    (`kl_div(kl_distr_init, kl_log_probs, log_target=True)`, compute_v.py:137-139)."""
    return torch.nn.functional.kl_div(before, now, log_target=True, reduction="batchmean")


def excise_kl(now: Float[Tensor, "rows vocab"], before: Float[Tensor, "rows vocab"]) -> Tensor:
    """excise's KL term without its weight: KL(before || now), batch mean."""
    return torch.nn.functional.kl_div(now, before, log_target=True, reduction="batchmean")


def rome_weight_decay(delta: Float[Tensor, " d"], v0: Float[Tensor, " d"]) -> Tensor:
    """|delta| / |v0|^2 (compute_v.py:140-142; the squared form is commented out there)."""
    return delta.norm() / v0.norm() ** 2


def excise_weight_decay(delta: Float[Tensor, " d"], v_norm: float) -> Tensor:
    """|delta|^2 / |W^T k|^2."""
    return delta.norm() ** 2 / max(v_norm, 1e-6) ** 2


def _prompts(fact: Fact, n_prefixes: int, families: Sequence[str] = ("request",)) -> list[str]:
    """The request prompt, its `n_prefixes` prefixed copies, then the templates of the other `families`."""
    others = [t for fam in families if fam != "request" for t in fact.templates(fam)]
    return [fact.prompt] + [f"{p} {fact.prompt}" for p in PREFIXES[:n_prefixes]] + others


class PromptRow(NamedTuple):
    """One prompt as ROME and MEMIT feed it: the tokens, where the subject ends and where the answer is read."""

    tokens: list[int]          # the prompt's ids, then the target's but its last (teacher forcing)
    subject_last: int          # position of the subject's last token
    read: int                  # position of the prompt's last token: its next-token prediction is the answer
    target: list[int]          # the target's ids


def _at(rows: Sequence[PromptRow], position: str) -> list[int]:
    """Each row's edit position for the role `position`."""
    return [position_index(position, r.subject_last, r.read) for r in rows]


def _rows(model: Any, fact: Fact, templates: list[str], target: str | None = None) -> list[PromptRow]:
    """One PromptRow per template of `fact` (with `target` in place of the fact's, if given)."""
    out = []
    for t in templates:
        f = fact if target is None else Fact(fact.subject, fact.relation, target, fact.prompt)
        pt = tokenize_prompt(model, f, t)
        ids = pt.tokens.tolist()
        out.append(PromptRow(ids + list(pt.target_ids[:-1]), pt.last_subject, len(ids) - 1, list(pt.target_ids)))
    return out


@torch.no_grad()
def compute_k(model: Any, fact: Fact, layer: int, n_prefixes: int, position: str = "subject_last",
              families: Sequence[str] = ("request",)) -> Tensor:
    """Mean MLP key at the edit `position` over the prompt, its prefixed copies and the other `families`."""
    keys = layer_keys(model, _rows(model, fact, _prompts(fact, n_prefixes, families)), layer, position)
    return keys.float().mean(0).to(keys.dtype)


def _kl_prompt_row(model: Any, fact: Fact):
    """ROME's KL prompt "{subject} is a" as a `_rows` row, read at the last subject token (compute_v.py:131)."""
    pt = tokenize_prompt(model, fact, KL_PROMPT)
    return PromptRow(pt.tokens.tolist(), pt.last_subject, pt.last_subject, list(pt.target_ids))


def _lens_hook(index: int) -> str:
    """The hook holding Hugging Face's hidden_states[index]: 0 is the embeddings, i the output of block i-1."""
    return stream_hook(index)


def _target_grid(rows: Sequence[PromptRow], width: int, device) -> Int[Tensor, "rows width"]:
    """Each row's target tokens at the positions that predict them (from its read position on), -100 elsewhere."""
    grid = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        grid[i, r.read:r.read + len(r.target)] = torch.tensor(r.target)
    return grid.to(device)


def _objective_loss(cfg: RomeConfig, logits: Tensor, grid: Tensor, read: Tensor, lens: Tensor | None,
                    target_first: int) -> tuple[Tensor, Tensor]:
    """The objective on the fact's prompts (the first len(read) rows), without the regularizer; returns
    (loss, p(target's first token) at each prompt's end)."""
    n = len(read)
    logp = logits[torch.arange(n, device=logits.device), read].float().log_softmax(-1)   # [n, vocab]
    p_target = logp[:, target_first].exp()
    o = cfg.objective
    nll = target_nll(logits[:n], grid) if o in ("rewrite", "erase", "empty", "empty_unlikelihood") else None
    if o == "rewrite":                      # excise's: summed over the target's tokens (ROME: their mean)
        return (nll * (grid != -100).sum(-1)).mean(), p_target
    if o == "empty":
        return nll.mean(), p_target
    if o == "erase":
        return erase_loss(nll), p_target
    if o == "head_projection":
        top, bottom = margin_loss(lens, target_first, cfg.margin_k)
        return top + bottom, p_target
    if o == "max_entropy":
        return -lens_entropy(lens), p_target
    loss = unlikelihood(p_target)           # the *_unlikelihood variants
    if o == "empty_unlikelihood":
        loss = loss + cfg.aux_weight * nll.mean()
    elif o == "max_entropy_unlikelihood":
        loss = loss + cfg.aux_weight * (logp.exp() * logp).sum(-1).mean()       # + aux * (-entropy)
    elif o == "head_projection_unlikelihood" and lens is not None:     # no lens between the last block and the output
        loss = loss + unlikelihood(lens[..., target_first])
    return loss, p_target


def compute_v(model: Any, fact: Fact, cfg: RomeConfig, k: Tensor,
              u: Tensor | None = None, keep: Sequence[Fact] = ()) -> tuple[Tensor, dict[str, Any]]:
    """The change of the MLP output at the edit position (`cfg.position`) that achieves the objective.

    With `u` (the whitened key over its product with k, C^-1 k / (k . C^-1 k)),
    the change is applied as the rank-one write will apply it: at every
    position of every prompt, scaled by u . (that position's MLP key), so the
    optimized value accounts for the prompts' keys differing from their mean k.
    The logit lens of head_projection / max_entropy reads each prompt's last
    real token (and, with regularizer "rome", the KL prompt's too), as the
    reference does; for a target of several tokens that is the position
    predicting its last token, where the hinge reads its first token's
    probability (compute_v.py:420-440). head_projection_unlikelihood reads the
    prompt's end. Cost: one forward, then up to `v_steps` forward+backward
    passes of (n_prefixes + 1 + KL prompts) rows.
    """
    view = linear(model, cfg.layer, "mlp.out")
    n_layers = model.cfg.n_layers
    rome_reg = cfg.regularizer == "rome"
    main = _rows(model, fact, _prompts(fact, cfg.n_prefixes, cfg.key_families),
                 cfg.empty if cfg.objective in ("empty", "empty_unlikelihood") else None)
    if rome_reg:
        kl_rows = [_kl_prompt_row(model, fact)] + [r for n in keep for r in _rows(model, n, [n.prompt])]
    else:
        neighbours = [n for n in fact.neighbors if n.subject == fact.subject] + list(keep)
        kl_rows = [r for n in neighbours for r in _rows(model, n, [n.prompt])]
    rows = main + kl_rows
    n_main = len(main)
    device = view.weight.device
    tokens, last = pad_batch([r.tokens for r in rows], model.tokenizer.pad_token_id or 0)
    tokens, last = tokens.to(device), last.to(device)
    subj = torch.tensor(_at(rows, cfg.position), device=device)      # each row's edit position
    # rows whose edit position carries the fact's key, where a constant delta stands for the write (without
    # u): every row at the subject (ROME's, the KL prompts included), only the fact's prompts at their end
    batch = torch.arange(len(rows) if cfg.position == "subject_last" else n_main, device=device)
    target_first = _rows(model, fact, [fact.prompt])[0].target[0]
    read = torch.tensor([r.read for r in main], device=device)
    kl_at = (n_main + torch.arange(len(kl_rows), device=device), torch.tensor([r.read for r in kl_rows], device=device))
    grid = _target_grid(main, tokens.shape[1], device)
    lens_layers = cfg.layers_read(n_layers)
    if cfg.objective in REFERENCE:          # every row's last real token, the KL prompt's included
        lens_rows = torch.arange(n_main + (1 if rome_reg else 0), device=device)
        lens_at = (lens_rows, last[lens_rows])
    else:
        lens_at = (torch.arange(n_main, device=device), read)

    mlp_out = hook_name("mlp", cfg.layer)
    store: dict[str, Tensor] = {}

    def keep_out(act, hook):
        store["out"] = act

    with torch.no_grad(), model.hooks(fwd_hooks=[(mlp_out, keep_out)]):
        base = model(tokens)
        kl_ref = base[kl_at].float().log_softmax(-1) if kl_rows else None
        v_init_norm = float((k @ view.W).norm())
        v0 = store["out"][0, subj[0]].float()        # ROME's target_init: the MLP output at the bare prompt
    limit = cfg.clamp * (float(v0.norm()) if rome_reg else v_init_norm)

    delta = torch.zeros(model.cfg.d_model, device=device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=cfg.lr)
    resid: dict[int, Tensor] = {}
    keys: dict[str, Tensor] = {}

    def add_delta(act, hook):
        if u is not None:                               # what W + u (delta)^T does to this activation
            scale = keys["post"].float() @ u.to(act.device, torch.float32)
            return act + scale[..., None].to(act.dtype) * delta.to(act.device, act.dtype)
        at = (batch.to(act.device), subj[batch].to(act.device))         # the block may sit on another device
        return act + torch.zeros_like(act).index_put(at, delta.expand(len(batch), -1).to(act.device, act.dtype))

    def keep_key(act, hook):
        keys["post"] = act.detach()

    def keep_resid(index):
        def keep(act, hook):
            resid[index] = act
        return keep

    hooks = [(mlp_out, add_delta)]
    if u is not None:
        hooks.insert(0, (hook_name("neuron", cfg.layer), keep_key))
    hooks += [(_lens_hook(i), keep_resid(i)) for i in sorted(set(lens_layers))]
    history = []
    with torch.enable_grad():
        for step in range(cfg.v_steps):
            resid.clear()
            with model.hooks(fwd_hooks=hooks):
                logits = model(tokens)
            lens = None
            if lens_layers:
                stacked = torch.stack([resid[i][lens_at] for i in lens_layers])     # [layers, rows, d_model]
                lens = model.unembed(model.ln_final(stacked)).float().softmax(-1)   # [layers, rows, vocab]
            loss, p_target = _objective_loss(cfg, logits, grid, read, lens, target_first)
            if kl_rows:
                now = logits[kl_at].float().log_softmax(-1)
                loss = loss + cfg.kl_weight * (rome_kl(now, kl_ref) if rome_reg else excise_kl(now, kl_ref))
            loss = loss + cfg.weight_decay * (rome_weight_decay(delta, v0) if rome_reg
                                              else excise_weight_decay(delta, v_init_norm))
            history.append({"step": step, "loss": float(loss.detach()), "p_target": float(p_target.detach().max())})
            if cfg.objective in UNLIKELIHOOD and float(p_target.detach().max()) < cfg.stop_prob:
                break
            (delta.grad,) = torch.autograd.grad(loss, [delta])
            opt.step()
            with torch.no_grad():
                if delta.norm() > limit:
                    delta.mul_(limit / delta.norm())
    delta = delta.detach()
    return delta, {"steps": len(history), "final_p_target": history[-1]["p_target"],
                   "delta_norm": float(delta.norm()), "v_init_norm": v_init_norm}


def rome(model: Any, fact: Fact, config: RomeConfig, sample: list[str] | None = None,
         C: Tensor | None = None, protect_from: Sequence[Fact] | None = None) -> EditRecord:
    """Apply one ROME edit for `fact` (objective in `config`); returns the EditRecord.

    `sample`: texts for the key covariance (default: texts the model writes
    itself, with a warning; the organism's corpus is `excise.organism.corpus()`); or pass `C` directly (do, across sequential edits: the
    cache is keyed by the weights, so an edited model would get a new C). Cost: one covariance (cached on
    disk), `v_steps` forward+backward passes on ~(n_prefixes + 6) prompts.
    """
    n_layers = model.cfg.n_layers
    if not 0 <= config.layer < n_layers:
        raise ValueError(f"layer {config.layer} is out of range: the model has {n_layers} layers "
                         f"(0..{n_layers - 1})")
    if config.layer == n_layers - 1 and config.position == "subject_last":
        raise ValueError(f"layer {config.layer} is the last block: an edit at the subject's position there "
                         "cannot reach the prediction at the prompt's end. Choose a layer below "
                         f"{n_layers - 1}, or position='prompt_last' (excise.locate.edit_site picks both)")
    deleting = config.objective != "rewrite"
    recalled = recall_table(model, [fact], ("request",)).rate("request") == 1.0
    if deleting and not recalled:
        warnings.warn(f"{fact!r} is not recalled by the model in the first place (its target is not "
                      "the top-1 answer); deleting it anyway, and the record says so", stacklevel=2)
    if C is None:
        C = second_moment(model, config.layer, resolve_sample(model, sample))
    view = linear(model, config.layer, "mlp.out")
    k = compute_k(model, fact, config.layer, config.n_prefixes, config.position, config.key_families)
    kf = k.float()                                 # the metric, the solve and the write in float32, any model dtype
    C_inv = inverse_second_moment(C.to(k.device, torch.float32), config.ridge)
    u = None
    if config.through_edit or config.protect:
        u = C_inv @ kf
        u = u / (u @ kf)
    keep = _most_exposed(model, fact, config, u, protect_from) if config.protect else []
    delta, info = compute_v(model, fact, config, k, u, keep)
    hyper = asdict(config)
    with recording(model, f"rome_{config.objective}", hyper, facts=[fact], scope=[view.weight]) as box, \
            torch.no_grad():
        W = view.W
        v = W.float().T @ kf + delta.float()
        W.copy_(rank_one_update(W.float(), kf, v, C_inv))          # rounded to the weight's dtype once, here
    record: EditRecord = box["record"]
    record.meta |= {"recalled_before": recalled, **info,
                    "protected": [f"{f.subject} / {f.relation}" for f in keep]}
    return record


@torch.no_grad()
def layer_keys(model: Any, rows: Sequence[PromptRow], layer: int, position: str | None, batch_size: int = 256,
               ) -> Tensor:
    """MLP keys at `layer` of `_rows` rows: at each row's edit `position` ([rows, d_mlp]) or, with None, at
    every real token ([tokens, d_mlp]); the forwards stop after `layer`."""
    device = device_of(model)
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        tokens, last = pad_batch([r.tokens for r in chunk], model.tokenizer.pad_token_id or 0)
        k = mlp_keys(model, tokens, layer)
        if position is not None:
            at = torch.tensor(_at(chunk, position), device=device)
            out.append(k[torch.arange(len(chunk), device=device), at])
        else:
            out.append(k[(torch.arange(tokens.shape[1]) <= last[:, None]).to(device)])
    return torch.cat(out)


@torch.no_grad()
def _most_exposed(model: Any, fact: Fact, cfg: RomeConfig, u: Tensor, pool: Sequence[Fact] | None) -> list[Fact]:
    """The `cfg.protect` facts of other subjects whose keys the write along u moves most."""
    if pool is None:
        raise ValueError(f"protect={cfg.protect} needs the facts to choose from: pass protect_from=[...] "
                         "(facts of other subjects the model knows, e.g. a KnowledgeContext's retain facts, or "
                         "list(excise.organism.world()) on the organism)")
    pool = [f for f in pool if f.subject != fact.subject]
    if not pool:
        return []
    rows = [r for f in pool for r in _rows(model, f, [f.prompt])]
    order = (layer_keys(model, rows, cfg.layer, cfg.position).float() @ u.float()).abs().argsort(descending=True)
    return [pool[i] for i in order[: cfg.protect].tolist()]


def resolve_sample(model: Any, sample: Sequence[str] | None, method: str = "ROME") -> list[str]:
    """`sample` if given; else texts the model writes itself (`generated_sample(model)`, seed 0), announced
    by a warning, since the key covariance is only as good as its sample's likeness to the training text."""
    if sample is not None:
        return list(sample)
    from excise.generation import generated_sample

    texts = generated_sample(model)
    warnings.warn(f"{method}: no sample given for the key covariance; using {len(texts)} texts the model "
                  "wrote itself (excise.edit.generated_sample(model), seed 0). Pass sample=[...] with text like "
                  "the training data (the organism's: excise.organism.corpus()) or C= to choose", stacklevel=3)
    return texts


def rome_each(model: Any, facts: Sequence[Fact], config: RomeConfig, sample: list[str] | None = None,
              progress: bool = True) -> EditRecord:
    """ROME on each fact in turn, recorded as one edit (undo reverts them all).

    The key covariance is the unedited model's, computed (or read from the
    cache) once, as ROME and MEMIT do across sequential edits; a fresh C per
    edit would cost a pass over the sample each time. Several facts of one
    subject share one key, so later edits overwrite earlier ones: prefer
    gradient methods to delete a whole subject.

    Returns one EditRecord for all the facts. Cost: the covariance (one pass over the sample, or a
    cache read), then one `rome` per fact (its key, a value optimization of `config.v_steps` steps).
    """
    facts = list(facts)
    C = second_moment(model, config.layer, resolve_sample(model, sample), progress=progress)
    with recording(model, "rome", asdict(config), facts) as box:
        sequence(model, facts, lambda m, f: rome(m, f, config, C=C), progress=progress)
    return box["record"]
