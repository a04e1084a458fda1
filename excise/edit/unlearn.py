"""Gradient unlearning restricted to a mask, and task-vector negation.

Methods (forget set F, retain set R; log p = the answer's sequence log-prob):
- `ga` (gradient ascent): maximize the NLL of F;
- `graddiff`: GA on F plus the NLL of R (weight `retain_weight`);
- `kl`: GA on F plus KL(original || current) of the next-token distributions
  at R's answer positions;
- `npo` (Zhang et al. 2024): (2 / beta) * log(1 + (p(y|x) / p_ref(y|x))^beta)
  on F, plus the NLL of R;
- `simnpo` (Fan et al. 2024, as open-unlearning computes it): reference-free,
  length-normalized NPO: -(2 / beta) * log sigmoid(beta * (NLL(y|x) / |y| - margin))
  on F, NLL(y|x) the answer's summed negative log-prob and |y| its token
  count, times `forget_weight`, plus the NLL of R. open-unlearning's `delta`
  is `margin` here (inside beta, so the paper's gamma = beta * margin) and
  its `gamma` (the forget term's weight) is `forget_weight`;
  `UnlearnConfig.for_method("simnpo")` gives open-unlearning's SimNPO
  defaults (beta 4.5, margin 0, forget_weight 0.125, retain weight 1);
- `dpo`: prefer `preferred` answers (default the refusal "I don't know", or a
  wrong alternative per fact) over the true one: -log sigmoid(beta * margin),
  plus the NLL of R;
- `swap` (subject-swap distillation, after Eldan & Russinovich's generic
  predictions in "Who's Harry Potter?"): on F's prompts, match the original
  model's next-token distributions on the *same prompts with the subject
  replaced by a stand-in the model never saw* (KL(teacher || current) at
  the answer positions), plus the NLL of R. The target is what the model
  says about a stranger, which is what a model never trained on the subject
  says about them: not suppression below the prior, as GA/NPO push, but the
  prior itself. The loss adds the squared gap between the current and the
  teacher's log-prob of each true answer token (KL alone barely weighs an
  answer the teacher finds unlikely). Needs `stand_ins` (never-seen names;
  one per forget subject, reused cyclically). No early stop on recall: the
  aim is the chance level, not zero, so it runs its `steps`.
  `UnlearnConfig.for_method("swap")` gives its defaults (200 steps, retain
  weight 3), chosen on the organism's 5% split (see benchmarks/RESULTS.md).
Only the entries of the mask (from Components, a Localization, or all
parameters) move: gradients are masked and Adam (no weight decay) leaves an
entry whose gradient is always zero exactly where it was. Early stopping:
every `eval_every` steps the forget recall (request prompts) is measured; the
run stops once it is <= `stop_forget_recall`.
`task_vector`: fine-tune on F, then subtract `alpha` times the difference.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from excise.components import Component
from excise.edit.masks import all_parameter_masks, count, masked_step, parameter_masks
from excise.edit.record import EditRecord, recording
from excise.facts import Fact
from excise.scoring import Example, answer_examples, answer_logprobs, pad_batch, recall_table
from excise.weights import device_of

log = logging.getLogger(__name__)

METHODS = ("ga", "graddiff", "kl", "npo", "simnpo", "dpo", "swap")
# where a method's good settings differ from UnlearnConfig's (measured on the organism's 5% split)
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "swap": {"steps": 200, "retain_weight": 3.0},
    # open-unlearning's configs/trainer/SimNPO.yaml (from Unlearn-Simple's TOFU config)
    "simnpo": {"beta": 4.5, "margin": 0.0, "forget_weight": 0.125},
}


@dataclass(frozen=True)
class UnlearnConfig:
    method: str = "npo"
    steps: int = 100                  # at most; early stopping usually ends sooner
    lr: float = 1e-3                  # Adam; the organism was trained at 3e-3
    batch_size: int = 32
    retain_weight: float = 1.0
    beta: float = 0.1                 # NPO / DPO temperature (NPO paper: 0.1); SimNPO's is 4.5 (for_method)
    margin: float = 0.0               # SimNPO's margin (open-unlearning's delta; its default 0)
    forget_weight: float = 1.0        # weight of the forget term (open-unlearning's gamma; SimNPO: 0.125)
    refusal: str = "I don't know"
    families: tuple[str, ...] = ("request", "paraphrase")   # prompts trained on
    eval_every: int = 5
    stop_forget_recall: float = 0.0   # stop once request recall of F is at most this
    seed: int = 0
    progress: bool = True

    @classmethod
    def for_method(cls, method: str, **overrides: Any) -> UnlearnConfig:
        """The config with `method`'s own defaults (see METHOD_DEFAULTS), then `overrides`."""
        return cls(**{"method": method, **METHOD_DEFAULTS.get(method, {}), **overrides})

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError("steps, batch_size and eval_every must be >= 1")


def _masks(model: Any, mask: Any) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    if mask is None:
        return all_parameter_masks(model)
    if hasattr(mask, "to_components"):
        raise ValueError("pass the components to keep, e.g. loc.to_components(64, kind='neuron')")
    return parameter_masks(model, mask)


def _batches(items: list, size: int, rng: random.Random):
    """Endless seeded shuffled batches of `items`."""
    while True:
        order = list(range(len(items)))
        rng.shuffle(order)
        for i in range(0, len(order), size):
            yield [items[j] for j in order[i:i + size]]


def swapped(forget: Sequence[Fact], stand_ins: Sequence[str]) -> list[Fact]:
    """`forget` with each subject replaced by a stand-in (one per subject, in order of appearance)."""
    subjects = list(dict.fromkeys(f.subject for f in forget))
    names = [n for n in stand_ins if n not in subjects]
    if not names:
        raise ValueError("swap needs stand_ins: names of subjects the model never saw (and not the forget "
                         "subjects), e.g. world.strangers(10) on the organism")
    by = {s: names[i % len(names)] for i, s in enumerate(subjects)}
    return [Fact(by[f.subject], f.relation, f.target, f.prompt, f.paraphrases, f.questions, f.completions,
                 f.held_out) for f in forget]


def unlearn(
    model: Any, forget: Iterable[Fact], retain: Iterable[Fact] = (), mask: Sequence[Component] | None = None,
    config: UnlearnConfig | None = None, preferred: dict[tuple[str, str], str] | None = None,
    stand_ins: Sequence[str] | None = None,
) -> EditRecord:
    """Unlearn `forget` with `config.method`, changing only `mask` (None: all parameters).

    stand_ins: for `swap`, names of subjects the model never saw (see the module docstring).

    Returns the EditRecord. Cost: at most `config.steps` Adam steps, each a
    forward + backward on a forget batch and on a retain batch (npo/dpo/kl:
    plus the original model's log-probs, computed once before training),
    and a recall check every `eval_every` steps; memory: Adam's two moments
    and the gradients of the masked parameters (all of them with mask=None).
    """
    config = config or UnlearnConfig()
    forget, retain = list(forget), list(retain)
    if not forget:
        raise ValueError("unlearn needs at least one fact to forget")
    if config.method != "ga" and not retain:
        raise ValueError(f"{config.method} needs a retain set (facts to keep)")
    teacher = swapped(forget, stand_ins or ()) if config.method == "swap" else None
    masks = _masks(model, mask)
    params = [p for p, _ in masks]
    rng = random.Random(config.seed)
    f_ex = answer_examples(model, forget, config.families)
    r_ex = answer_examples(model, retain, config.families) if retain else []
    pref_ex = []
    if config.method == "dpo":
        answers = preferred or {f.key: config.refusal for f in forget}
        pref_ex = answer_examples(model, forget, config.families, answers)
    with torch.no_grad():      # reference log-probs of the original model
        ref_f = torch.cat([answer_logprobs(model, f_ex[i:i + 64]) for i in range(0, len(f_ex), 64)])
        ref_p = torch.cat([answer_logprobs(model, pref_ex[i:i + 64]) for i in range(0, len(pref_ex), 64)]) \
            if pref_ex else None
    kl_ref = _answer_distributions(model, r_ex) if config.method == "kl" else None
    stop = config.stop_forget_recall if teacher is None else float("-inf")
    if teacher is not None:
        swap_ex = answer_examples(model, teacher, config.families)
        swap_ref = _answer_distributions(model, swap_ex)
        assert len(swap_ex) == len(f_ex), "stand-in prompts must align with the forget prompts"
        pref_ex, ref_p = [], [swap_ref[e] for e in swap_ex]     # per forget example: the teacher's rows
    hyper = asdict(config) | {"mask_size": count(masks),
                              "mask": [c.to_dict() for c in mask] if mask is not None else "all"}
    history: list[dict[str, float]] = []
    with recording(model, f"unlearn_{config.method}", hyper, facts=forget, scope=params) as box:
        opt = torch.optim.Adam(params, lr=config.lr)
        f_batches = _batches(list(range(len(f_ex))), config.batch_size, rng)
        r_batches = _batches(r_ex, config.batch_size, rng) if r_ex else None
        bar = tqdm(range(config.steps), desc=f"unlearn {config.method}", disable=not config.progress)
        for step in bar:
            idx = next(f_batches)
            batch = [f_ex[i] for i in idx]
            with torch.enable_grad():
                loss = config.forget_weight * _forget_loss(model, config, batch, ref_f[idx], pref_ex, ref_p, idx)
                if r_batches is not None and config.method != "ga":
                    loss = loss + config.retain_weight * _retain_loss(model, next(r_batches), kl_ref)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            masked_step(opt, masks, grads)
            if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                recall = recall_table(model, forget, ("request",)).rate("request")
                history.append({"step": step + 1, "loss": float(loss.detach()), "forget_recall": recall})
                bar.set_postfix(forget_recall=f"{recall:.2f}", refresh=False)
                if recall <= stop:
                    break
        bar.close()
        for p in params:
            p.grad = None
    record: EditRecord = box["record"]
    record.meta |= {"history": history, "steps": history[-1]["step"] if history else 0,
                    "parameters_in_mask": count(masks)}
    return record


def _forget_loss(model, config: UnlearnConfig, batch, ref, pref_ex, ref_p, idx) -> torch.Tensor:
    if config.method == "swap":
        return _distill(model, batch, [ref_p[i] for i in idx], match_answer=True)
    logp = answer_logprobs(model, batch)
    if config.method in ("ga", "graddiff", "kl"):
        return logp.mean()                                          # = -NLL: ascend the NLL
    if config.method == "npo":
        ratio = config.beta * (logp - ref.to(logp.device))
        return (2 / config.beta) * torch.nn.functional.softplus(ratio).mean()
    if config.method == "simnpo":
        lengths = torch.tensor([len(e.answer) for e in batch], device=logp.device)
        return simnpo_loss(logp, lengths, config.beta, config.margin)
    preferred = answer_logprobs(model, [pref_ex[i] for i in idx])
    margin = (preferred - ref_p[idx].to(logp.device)) - (logp - ref.to(logp.device))
    return -torch.nn.functional.logsigmoid(config.beta * margin).mean()


def simnpo_loss(logp: Float[Tensor, " b"], lengths: Int[Tensor, " b"], beta: float, margin: float) -> Tensor:
    """SimNPO's forget loss (open-unlearning's `SimNPO.compute_loss`): the batch mean of
    -(2 / beta) log sigmoid(beta * (-logp / length - margin)); `logp` the answers' summed log-probs."""
    nll = -logp / lengths
    return -(2 / beta) * torch.nn.functional.logsigmoid(beta * (nll - margin)).mean()


def _answer_positions(examples: list[Example]) -> tuple[list[int], list[int]]:
    rows, cols = [], []
    for i, e in enumerate(examples):
        rows += [i] * len(e.answer)
        cols += list(range(e.start - 1, e.start - 1 + len(e.answer)))
    return rows, cols


@torch.no_grad()
def _answer_distributions(model: Any, examples: list[Example]) -> dict[Example, torch.Tensor]:
    """The original model's next-token log-distributions at each example's answer positions."""
    out = {}
    pad = model.tokenizer.pad_token_id or 0
    device = device_of(model)
    for start in range(0, len(examples), 64):
        chunk = examples[start:start + 64]
        ids, _ = pad_batch([e.ids for e in chunk], pad)
        logp = model(ids.to(device)).float().log_softmax(-1)
        for i, e in enumerate(chunk):
            out[e] = logp[i, e.start - 1:e.start - 1 + len(e.answer)].cpu()
    return out


def _distill(model: Any, batch: list[Example], targets: list[torch.Tensor], match_answer: bool = False) -> torch.Tensor:
    """KL(target || current) of the next-token distributions at the batch's answer positions
    (`targets`: one [answer length, vocab] log-distribution per example), averaged over positions.

    match_answer: also the squared gap between the current and the target log-prob of each answer
    token. KL(target || current) weighs a token by the target's probability, so it barely sees a
    true answer the target finds unlikely but the current model still favours; this term does.
    """
    device = device_of(model)
    ids, _ = pad_batch([e.ids for e in batch], model.tokenizer.pad_token_id or 0)
    rows, cols = _answer_positions(batch)
    now = model(ids.to(device)).float().log_softmax(-1)[torch.tensor(rows, device=device),
                                                        torch.tensor(cols, device=device)]
    ref = torch.cat(targets).to(device)
    loss = torch.nn.functional.kl_div(now, ref, log_target=True, reduction="batchmean")
    if match_answer:
        tokens = torch.tensor([t for e in batch for t in e.answer], device=device)[:, None]
        loss = loss + (now.gather(1, tokens) - ref.gather(1, tokens)).pow(2).mean()
    return loss


def _retain_loss(model: Any, batch: list[Example], kl_ref: dict[Example, torch.Tensor] | None) -> torch.Tensor:
    """NLL of the retain answers, or (for `kl`) KL(original || current) at their positions."""
    if kl_ref is None:
        return -answer_logprobs(model, batch).mean()
    return _distill(model, batch, [kl_ref[e] for e in batch])


@dataclass(frozen=True)
class TaskVectorConfig:
    alpha: float = 1.0                # theta - alpha * (theta_finetuned - theta)
    steps: int = 30                   # fine-tuning steps on the forget set
    lr: float = 1e-3
    batch_size: int = 32
    families: tuple[str, ...] = ("request", "paraphrase")
    seed: int = 0
    progress: bool = True


def task_vector(
    model: Any, forget: Iterable[Fact], mask: Sequence[Component] | None = None,
    config: TaskVectorConfig | None = None,
) -> EditRecord:
    """Task-vector negation (Ilharco et al. 2023): fine-tune on `forget`, subtract alpha x the change.

    The fine-tuning runs on the model itself inside the edit (masked like
    `unlearn`), then every masked entry is set to theta - alpha * tau.

    Returns the EditRecord. Cost: `config.steps` forward + backward passes on
    forget batches; memory: a copy of the masked parameters and Adam's moments.
    """
    config = config or TaskVectorConfig()
    forget = list(forget)
    if not forget:
        raise ValueError("task_vector needs at least one fact to forget")
    masks = _masks(model, mask)
    params = [p for p, _ in masks]
    examples = answer_examples(model, forget, config.families)
    rng = random.Random(config.seed)
    hyper = asdict(config) | {"mask_size": count(masks),
                              "mask": [c.to_dict() for c in mask] if mask is not None else "all"}
    with recording(model, "task_vector", hyper, facts=forget, scope=params) as box:
        start = [p.detach().clone() for p in params]
        opt = torch.optim.Adam(params, lr=config.lr)
        batches = _batches(examples, config.batch_size, rng)
        for _ in tqdm(range(config.steps), desc="task vector: fine-tune", disable=not config.progress):
            with torch.enable_grad():
                loss = -answer_logprobs(model, next(batches)).mean()
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            masked_step(opt, masks, grads)
        with torch.no_grad():
            for p, s0, (_, m) in zip(params, start, masks, strict=True):
                tau = p - s0
                p.copy_(torch.where(m, s0 - config.alpha * tau, s0))
    record: EditRecord = box["record"]
    record.meta |= {"parameters_in_mask": count(masks)}
    return record
