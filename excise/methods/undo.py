"""`undo` (Lee et al. 2025, "Distillation robustifies unlearning"): unlearn with a teacher method, then noise
the model and distill the unlearned model back into it (`excise.edit.undo`). The record covers both steps."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from excise.edit.record import recording
from excise.edit.undo import UndoConfig, undo
from excise.methods.base import METHODS, Method
from excise.weights import copy_model

TEXT_FAMILIES = ("request", "paraphrase", "question", "completion")


@dataclass(frozen=True)
class UndoMethodConfig(UndoConfig):
    teacher: str = "swap"             # the method UNDO distils (the unlearn table's best row before UNDO)
    alpha: float = 0.6                # the reference sweeps 0.1-0.7; 0.3 let the facts back (excise/edit/undo.py)
    stop: str = "recall"              # excise's stop: retained recall back within retain_threshold of the teacher's
    max_steps: int = 1500             # the benches' cap (the organism's 5% split stopped after 1,250-1,700)
    eval_facts: int = 200             # retain facts whose recall (and sentences' loss) the stop reads
    # who teaches the texts that name no forget subject: "unlearned" (the reference: the teacher method's model
    # teaches every text) or "original" (excise's variant: the model before unlearning; `excise.edit.undo`)
    outside_teacher: str = "unlearned"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.outside_teacher not in ("unlearned", "original"):
            raise ValueError(f"outside_teacher must be 'unlearned' (the reference's) or 'original', got "
                             f"{self.outside_teacher!r}")


def fact_sentences(facts, families=TEXT_FAMILIES) -> list[str]:
    """Each fact as a sentence under every template of `families` (what UNDO's stop reads the loss of)."""
    return [f"{f.fill(t)} {f.target}." for f in facts for fam in families for t in f.templates(fam)]


class Undo(Method):
    name = "undo"
    label = "UNDO"
    summary = "UNDO: unlearn with a teacher method (--option teacher=NAME), then noise and distil"
    Config = UndoMethodConfig
    mask = "optional"                 # the teacher's mask; the distillation changes every parameter
    requires = ("retain", "sample")
    reads = ("stand_ins",)
    source = "Lee et al. 2025; AddieFoote/distillation-robustify-unlearning"

    def run(self, model, facts, context, config, mask):
        teacher = METHODS.get(config.teacher)
        if teacher is self:
            raise ValueError("undo's teacher must be another method (e.g. swap, npo)")
        missing = [f for f in teacher.requires if not getattr(context, f)]
        if missing:
            raise ValueError(f"undo's teacher {teacher.name} needs {', '.join(missing)} in the context")
        kept = list(context.retain[:config.eval_facts])
        distil = UndoConfig(**{f.name: getattr(config, f.name) for f in fields(UndoConfig)})
        with recording(model, "undo", asdict(config), facts) as box:
            original = copy_model(model) if config.outside_teacher == "original" else None
            taught = teacher.run(model, facts, context, teacher.configure_run(config.seed, config.progress),
                                 mask if teacher.mask != "none" else None)
            distilled = undo(model, context.sample, fact_sentences(kept), distil, eval_facts=kept, original=original,
                             forget_subjects=sorted({f.subject for f in facts}), stand_ins=context.stand_ins or (),
                             noise_mask=mask)
            del original
        record = box["record"]
        record.meta |= {"teacher": {"method": taught.method, "meta": taught.meta, "parameters": taught.n_changed},
                        **distilled.meta}
        return record


METHOD = Undo()
