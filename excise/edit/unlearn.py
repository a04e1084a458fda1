"""The loop every gradient unlearning method shares, restricted to a mask; and task-vector negation.

A gradient method (`excise.methods`: ga, graddiff, kl, npo, simnpo, dpo, swap)
is a `ForgetLoss`: its forget term, what it precomputes, and which retain
term it adds. `unlearn_with(model, loss, forget, retain, config)` runs it:

    loss = forget_weight * loss.forget_loss(batch)  +  retain_weight * retain term

the retain term the NLL of the retain answers (`retain_term="nll"`), or
KL(original || current) of the next-token distributions at their answer
positions (`"kl"`), or none (`"none"`, gradient ascent). As open-unlearning's
NPO builds on GradDiff, a method changes only its forget term.

Only the entries of the mask (from Components, a Localization, or all
parameters) move: gradients are masked and Adam (no weight decay) leaves an
entry whose gradient is always zero exactly where it was. Early stopping:
every `eval_every` steps the forget recall (request prompts) is measured; the
run stops once it is <= `stop_forget_recall` (unless the loss sets
`early_stop = False`). `stop_forget_probability` stops on the forget answers'
own likelihood instead (for any loss): once their mean probability, exp of the
mean token log-probability per answer (TOFU's Prob.), is at most it. Unlike a
step count, that target means the same on a forget set five times larger.
`unlearn_with(..., stop=rule)` adds a rule of your own, read at the same checks.
`task_vector`: fine-tune on F, then subtract `alpha` times the difference.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from excise.components import Component
from excise.edit.masks import all_parameter_masks, count, masked_step, parameter_masks
from excise.edit.record import EditRecord, recording
from excise.facts import Fact
from excise.scoring import Example, answer_examples, answer_logprobs, mean_token_logprobs, pad_batch, recall_table
from excise.weights import device_of

log = logging.getLogger(__name__)

RETAIN_TERMS = ("nll", "kl", "none")


@dataclass(frozen=True)
class UnlearnConfig:
    """The shared loop's settings; each gradient method's config extends it with its own (`excise.methods`)."""

    steps: int = 100                  # at most; early stopping usually ends sooner
    lr: float = 1e-3                  # Adam; the organism was trained at 3e-3
    batch_size: int = 32
    retain_weight: float = 1.0
    forget_weight: float = 1.0        # weight of the forget term (open-unlearning's gamma)
    families: tuple[str, ...] = ("request", "paraphrase")   # prompts trained on
    eval_every: int = 5
    stop_forget_recall: float = 0.0   # stop once request recall of F is at most this
    stop_forget_probability: float | None = None   # or once F's mean answer probability is at most this
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError("steps, batch_size and eval_every must be >= 1")
        if self.stop_forget_probability is not None and not 0 < self.stop_forget_probability < 1:
            raise ValueError(f"stop_forget_probability is a probability in (0, 1), got {self.stop_forget_probability}; "
                             "None runs every step")


class ForgetLoss:
    """A gradient method's part of the loop: subclass, set the attributes, implement `forget_loss`."""

    name: str = "forget_loss"
    retain_term: str = "nll"          # one of RETAIN_TERMS
    early_stop: bool = True           # stop once forget recall <= config.stop_forget_recall

    def prepare(self, model: Any, forget: list[Fact], examples: list[Example], config: Any,
                stand_ins: Sequence[str] | None) -> Any:
        """What the forget term needs from the original model, computed once before training (no gradients)."""
        return None

    def forget_loss(self, model: Any, batch: list[Example], idx: list[int], ref: torch.Tensor, extra: Any,
                    config: Any) -> torch.Tensor:
        """The forget term on `batch` (the forget examples at `idx`); `ref` their original answer log-probs."""
        raise NotImplementedError


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


def unlearn_with(
    model: Any, loss: ForgetLoss, forget: Iterable[Fact], retain: Iterable[Fact] = (),
    config: UnlearnConfig | None = None, mask: Sequence[Component] | None = None,
    stand_ins: Sequence[str] | None = None, stop: Callable[[Any], bool] | None = None,
) -> EditRecord:
    """Unlearn `forget` with `loss`, changing only `mask` (None: all parameters); see the module docstring.
    `stop`: a rule of your own, called with the model at every check (every `eval_every` steps, after the
    built-in stops); True ends the run (the history marks the check `stopped_by: "stop"`).

    Returns the EditRecord. Cost: at most `config.steps` Adam steps, each a
    forward + backward on a forget batch and on a retain batch (plus what
    `loss.prepare` computes once before training), and a recall check every
    `eval_every` steps; memory: Adam's two moments and the gradients of the
    masked parameters (all of them with mask=None).
    """
    config = config or UnlearnConfig()
    forget, retain = list(forget), list(retain)
    if loss.retain_term not in RETAIN_TERMS:
        raise ValueError(f"{loss.name}: retain_term must be one of {RETAIN_TERMS}, got {loss.retain_term!r}")
    if not forget:
        raise ValueError("unlearn needs at least one fact to forget")
    if loss.retain_term != "none" and not retain:
        raise ValueError(f"{loss.name} needs a retain set (facts to keep)")
    masks = _masks(model, mask)
    params = [p for p, _ in masks]
    rng = random.Random(config.seed)
    f_ex = answer_examples(model, forget, config.families)
    r_ex = answer_examples(model, retain, config.families) if retain and loss.retain_term != "none" else []
    with torch.no_grad():      # reference log-probs of the original model
        ref_f = torch.cat([answer_logprobs(model, f_ex[i:i + 64]) for i in range(0, len(f_ex), 64)])
        extra = loss.prepare(model, forget, f_ex, config, stand_ins)
    kl_ref = answer_distributions(model, r_ex) if loss.retain_term == "kl" else None
    user_stop, stop = stop, config.stop_forget_recall if loss.early_stop else float("-inf")
    hyper = {"method": loss.name} | asdict(config) | {
        "mask_size": count(masks), "mask": [c.to_dict() for c in mask] if mask is not None else "all"}
    history: list[dict[str, float]] = []
    with recording(model, f"unlearn_{loss.name}", hyper, facts=forget, scope=params) as box:
        opt = torch.optim.Adam(params, lr=config.lr)
        f_batches = _batches(list(range(len(f_ex))), config.batch_size, rng)
        r_batches = _batches(r_ex, config.batch_size, rng) if r_ex else None
        bar = tqdm(range(config.steps), desc=f"unlearn {loss.name}", disable=not config.progress)
        for step in bar:
            idx = next(f_batches)
            batch = [f_ex[i] for i in idx]
            with torch.enable_grad():
                total = config.forget_weight * loss.forget_loss(model, batch, idx, ref_f[idx], extra, config)
                if r_batches is not None:
                    total = total + config.retain_weight * _retain_loss(model, next(r_batches), kl_ref)
                grads = torch.autograd.grad(total, params, allow_unused=True)
            masked_step(opt, masks, grads)
            if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                recall = recall_table(model, forget, ("request",)).rate("request")
                history.append({"step": step + 1, "loss": float(total.detach()), "forget_recall": recall})
                bar.set_postfix(forget_recall=f"{recall:.2f}", refresh=False)
                if config.stop_forget_probability is not None:
                    history[-1]["forget_probability"] = mean_answer_probability(model, f_ex)
                    if history[-1]["forget_probability"] <= config.stop_forget_probability:
                        break
                if recall <= stop:
                    break
                if user_stop is not None and user_stop(model):
                    history[-1]["stopped_by"] = "stop"
                    break
        bar.close()
        for p in params:
            p.grad = None
    record: EditRecord = box["record"]
    record.meta |= {"history": history, "steps": history[-1]["step"] if history else 0,
                    "parameters_in_mask": count(masks)}
    return record


def mean_answer_probability(model: Any, examples: Sequence[Example]) -> float:
    """Mean over `examples` of exp(mean token log p(answer)): TOFU's Prob., on excise's Examples."""
    return float(mean_token_logprobs(model, examples).exp().mean())


def _answer_positions(examples: list[Example]) -> tuple[list[int], list[int]]:
    rows, cols = [], []
    for i, e in enumerate(examples):
        rows += [i] * len(e.answer)
        cols += list(range(e.start - 1, e.start - 1 + len(e.answer)))
    return rows, cols


@torch.no_grad()
def answer_distributions(model: Any, examples: list[Example]) -> dict[Example, torch.Tensor]:
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


def distill(model: Any, batch: list[Example], targets: list[torch.Tensor], match_answer: bool = False) -> torch.Tensor:
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
    return distill(model, batch, [kl_ref[e] for e in batch])


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
