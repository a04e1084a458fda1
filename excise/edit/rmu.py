"""RMU, representation misdirection (Li et al. 2024, WMDP): scramble the forget facts' activations at one layer.

At the steered layer l (the residual stream after block l), the forget
facts' activations are pushed toward one fixed random vector c, and the
retain facts' activations are held where the frozen original puts them:

    loss = mean_forget ||h_l(x) - c||^2 / d  +  alpha * mean_retain ||h_l(x) - h_l^orig(x)||^2 / d

(mean squared error over the selected token positions and the d_model
coordinates, as WMDP's code computes it with `mse_loss`). c = coeff * u /
||u|| with u ~ Uniform[0, 1)^d (WMDP draws `torch.rand`, so the direction
lies in the positive orthant), seeded. Only the parameters the reference
updates move: the MLP output matrices (Zephyr's `down_proj.weight`, WMDP's
`param_ids=6`) of the steered layer and the two below it (WMDP's
`layer_ids=5,6,7` for `layer_id=7`), or the entries of a `mask` of located
components. Adam without weight decay (WMDP's AdamW at its default decay 0).

What the reference defaults become on a small model (see RmuConfig):
WMDP's numbers are Zephyr-7B's (32 layers, d_model 4096). The layer keeps its
share of depth (7 of 32); the steering coefficient (WMDP's code default 20,
its published Zephyr run 6.5, open-unlearning's class default 20 and TOFU
config 2) is an absolute activation norm, so here it is Adaptive RMU's rule
(Dang et al. 2025): `steering_scale` (5) times the mean token norm of the
original model's forget activations at the layer; the learning rate and step
count are the organism's (measured on two organism subjects' 12 facts with 200
retain facts: lr 1e-2 and WMDP's code-default alpha 100 forget all 12 at 0.97
retain recall; lr 1e-3 or alpha 1200 forget none in 80 steps).

Token positions: WMDP steers every token of a forget document (its forget
and retain corpora share no text). A fact's prompt shares its template words
with the retain facts of the same relation, and the positions before the
subject are computed identically for both, so steering them fights the
retain term; by default (`positions="subject_on"`) only the positions from
the subject's first token to the end of the answer are used, for forget and
retain alike. `positions="all"` is WMDP's choice (BOS included).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from excise.components import Component, hook_name
from excise.edit.masks import count, masked_step, parameter_masks
from excise.edit.record import EditRecord, recording
from excise.facts import Fact, tokenize_prompt
from excise.scoring import pad_batch, recall_table
from excise.weights import device_of, linear

log = logging.getLogger(__name__)

POSITIONS = ("subject_on", "all")


@dataclass(frozen=True)
class RmuConfig:
    layer: int | None = None          # steered layer; None: WMDP's 7 of Zephyr's 32 as a share of depth
    #                                   (round(7/32 * n_layers): 1 on the 4-layer organism), or, with a mask,
    #                                   the deepest masked layer
    update_layers: int = 3            # WMDP: layer_ids 5,6,7 for layer_id 7 (the layer and the two below;
    #                                   on the organism layers 0 and 1); ignored with a mask
    steering_coeff: float | None = None   # ||c||; None: steering_scale x the mean forget-activation norm
    steering_scale: float = 5.0       # Adaptive RMU's scale (Dang et al. 2025); WMDP's absolute 6.5/20 is Zephyr's
    alpha: float = 100.0              # retain weight: WMDP's code default (its published Zephyr run: 1200;
    #                                   on the organism 1200 holds every activation and forgets nothing)
    steps: int = 80                   # WMDP's max_num_batches (code default)
    lr: float = 1e-2                  # WMDP: 5e-5 on a 7B model; organism: 1e-3 moves too little in 80 steps
    batch_size: int = 32              # WMDP: 4 documents of up to 512 tokens; here prompts of ~10 tokens
    positions: str = "subject_on"     # see the module docstring; "all" is WMDP's
    families: tuple[str, ...] = ("request", "paraphrase")   # prompts trained on
    eval_every: int = 10              # forget recall logged to meta["history"]; no early stop (WMDP has none)
    seed: int = 0                     # the control vector and the batch order
    progress: bool = True

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1 or self.update_layers < 1:
            raise ValueError("steps, batch_size, eval_every and update_layers must be >= 1")
        if self.steering_coeff is not None and self.steering_coeff <= 0:
            raise ValueError(f"steering_coeff must be > 0 (or None for the scaled norm), got {self.steering_coeff}")
        if self.steering_scale <= 0 or self.lr <= 0 or self.alpha < 0:
            raise ValueError("steering_scale and lr must be > 0 and alpha >= 0")


# -- the maths ------------------------------------------------------------------------------------------

def control_vector(d_model: int, coeff: float, seed: int) -> Float[Tensor, " d_model"]:
    """WMDP's control vector: a Uniform[0, 1)^d draw (seeded), scaled to norm `coeff`."""
    u = torch.rand(d_model, generator=torch.Generator().manual_seed(seed))
    return u / u.norm() * coeff


def rmu_loss(
    h_forget: Float[Tensor, "n_f d_model"], control: Float[Tensor, " d_model"],
    h_retain: Float[Tensor, "n_r d_model"], h_retain_orig: Float[Tensor, "n_r d_model"], alpha: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """(total, forget, retain) over the selected token rows: MSE to c, and alpha x MSE to the original."""
    forget = (h_forget - control).pow(2).mean()
    retain = (h_retain - h_retain_orig).pow(2).mean()
    return forget + alpha * retain, forget, retain


# -- the plumbing ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Text:
    ids: tuple[int, ...]       # prompt + whole answer: the fact as text
    first: int                 # first position whose activation enters the loss


def _texts(model: Any, facts: Iterable[Fact], families: Sequence[str], positions: str) -> list[_Text]:
    out = []
    for f in facts:
        for fam in families:
            for template in f.templates(fam):
                pt = tokenize_prompt(model, f, template)
                out.append(_Text(tuple(pt.tokens.tolist()) + pt.target_ids,
                                 pt.subject[0] if positions == "subject_on" else 0))
    return out


def _selected(batch: list[_Text], width: int) -> Bool[Tensor, "b pos"]:
    pos = torch.arange(width)[None]
    first = torch.tensor([t.first for t in batch])[:, None]
    end = torch.tensor([len(t.ids) for t in batch])[:, None]
    return (pos >= first) & (pos < end)


def _activations(model: Any, batch: list[_Text], layer: int) -> Float[Tensor, "n d_model"]:
    """The residual stream after block `layer` at each text's selected positions, rows in (text, position)
    order. One forward of the padded batch through block `layer` only (with grad if enabled)."""
    device = device_of(model)
    ids, _ = pad_batch([t.ids for t in batch], model.tokenizer.pad_token_id or 0)
    kept: list[Tensor] = []

    def keep(act: Tensor, hook: Any) -> None:
        kept.append(act)

    with model.hooks(fwd_hooks=[(hook_name("resid", layer), keep)]):
        model(ids.to(device), stop_at_layer=layer + 1)      # the blocks above cannot change it
    return kept[0][_selected(batch, ids.shape[1]).to(device)].float()


def _default_params(model: Any, layer: int, n: int) -> list[tuple[torch.nn.Parameter, Tensor]]:
    """WMDP's choice: the MLP output matrix (no bias) of `layer` and the n - 1 layers below it."""
    out = []
    for l in range(max(0, layer - n + 1), layer + 1):
        w = linear(model, l, "mlp.out").weight
        out.append((w, torch.ones(w.shape, dtype=torch.bool, device=w.device)))
    return out


def _batches(n: int, size: int, rng: random.Random):
    while True:
        order = list(range(n))
        rng.shuffle(order)
        for i in range(0, n, size):
            yield order[i:i + size]


def rmu(
    model: Any, forget: Iterable[Fact], retain: Iterable[Fact], mask: Sequence[Component] | None = None,
    config: RmuConfig | None = None,
) -> EditRecord:
    """RMU: steer `forget`'s activations at `config.layer` to a random vector, hold `retain`'s (module docstring).

    mask: components whose weights may move (as `unlearn`'s `mask=`); None: WMDP's MLP output matrices
    of the steered layer and the `update_layers - 1` below it. Masked entries above the steered layer
    cannot change its activations and stay put (a warning says so).

    Returns the EditRecord (meta: the layer, the coefficient used, the mean forget-activation norm,
    the forget/retain loss and forget recall every `eval_every` steps). On an exception the weights
    are restored. Cost: one no-grad forward over the forget and retain prompts (the norm and the
    original's retain activations, kept: n_retain_tokens x d_model floats), then `config.steps` Adam
    steps, each a forward + backward through blocks 0..layer (no further) on a forget batch and on a
    retain batch, plus a request-prompt recall check (full forwards) every `eval_every`.
    """
    config = config or RmuConfig()
    forget, retain = list(forget), list(retain)
    if not forget:
        raise ValueError("rmu needs at least one fact to forget")
    if not retain:
        raise ValueError("rmu needs a retain set (facts whose activations to hold), e.g. world.retain_set(forget)")
    n_layers = model.cfg.n_layers
    if config.layer is not None:
        layer = config.layer
    elif mask is not None:
        layer = max(c.layer for c in mask)
    else:
        layer = round(7 / 32 * n_layers)
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} is outside the model's {n_layers} layers")
    if mask is not None:
        if hasattr(mask, "to_components"):
            raise ValueError("pass the components to keep, e.g. loc.to_components(64, kind='neuron')")
        masks = parameter_masks(model, mask)
        above = sorted({c.layer for c in mask if c.layer > layer})
        if above:
            log.warning("rmu steers layer %d: masked components at layers %s cannot change it and stay put",
                        layer, above)
    else:
        masks = _default_params(model, layer, config.update_layers)
    params = [p for p, _ in masks]
    f_txt = _texts(model, forget, config.families, config.positions)
    r_txt = _texts(model, retain, config.families, config.positions)
    with torch.no_grad():       # the original's activations: the norm for c, and what retain must keep
        f_norm = torch.cat([_activations(model, f_txt[i:i + 64], layer) for i in range(0, len(f_txt), 64)]) \
            .norm(dim=-1).mean().item()
        r_orig: list[Tensor] = []
        for i in range(0, len(r_txt), 64):
            chunk = r_txt[i:i + 64]
            r_orig += _activations(model, chunk, layer).cpu().split([len(t.ids) - t.first for t in chunk])
    coeff = config.steering_coeff if config.steering_coeff is not None else config.steering_scale * f_norm
    control = control_vector(model.cfg.d_model, coeff, config.seed)
    device = device_of(model)
    rng = random.Random(config.seed)
    hyper = asdict(config) | {"mask_size": count(masks),
                              "mask": [c.to_dict() for c in mask] if mask is not None else "mlp_out"}
    history: list[dict[str, float]] = []
    with recording(model, "rmu", hyper, facts=forget, scope=params) as box:
        opt = torch.optim.Adam(params, lr=config.lr)
        f_batches = _batches(len(f_txt), config.batch_size, rng)
        r_batches = _batches(len(r_txt), config.batch_size, rng)
        bar = tqdm(range(config.steps), desc="rmu", disable=not config.progress)
        for step in bar:
            fi, ri = next(f_batches), next(r_batches)
            with torch.enable_grad():
                h_f = _activations(model, [f_txt[i] for i in fi], layer)
                h_r = _activations(model, [r_txt[i] for i in ri], layer)
                loss, f_loss, r_loss = rmu_loss(h_f, control.to(device), h_r,
                                                torch.cat([r_orig[i] for i in ri]).to(device), config.alpha)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            masked_step(opt, masks, grads)
            if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                recall = recall_table(model, forget, ("request",)).rate("request")
                history.append({"step": step + 1, "forget_loss": float(f_loss.detach()),
                                "retain_loss": float(r_loss.detach()), "forget_recall": recall})
                bar.set_postfix(forget_recall=f"{recall:.2f}", refresh=False)
        bar.close()
        for p in params:
            p.grad = None
    record: EditRecord = box["record"]
    record.meta |= {"layer": layer, "steering_coeff": coeff, "forget_norm": f_norm, "history": history,
                    "steps": config.steps, "parameters_in_mask": count(masks)}
    return record
