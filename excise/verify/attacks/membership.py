"""`membership`: membership inference on the answer tokens given the prompt, against never-seen facts
(`excise.verify.membership`); a fact is flagged when its answer log-likelihood is above the never-seen
facts' 1 - fpr quantile."""

from __future__ import annotations

import numpy as np

from excise.verify.attacks.base import Attack
from excise.verify.leakage import ALPHA, POWER, compare
from excise.verify.membership import ATTACK_SCORE, FPR, answer_rows, answer_scores, gradient_norms, membership_inference


class Membership(Attack):
    name = "membership"
    label = "membership inference"
    succeeds = "the answer's log-likelihood given the prompt is above the never-seen facts' 95th percentile " \
               "(its chance level, the false-positive rate, is fixed at 0.05)"
    statistic = "answer-token log-likelihood given the prompt"
    leaks = "forget answers are likelier than never-seen ones"
    needs = ("holdout",)

    def measure(self, model, facts, context, config, result):
        result.membership = membership_inference(model, facts, context.holdout, config.mia_fpr)

    def ran(self, result):
        return result.membership is not None

    def per_fact(self, result, b):
        return list(result.membership.flagged) if result.membership is not None else []

    def chance(self, result, b):
        return result.membership.fpr if result.membership is not None else None

    def above_chance(self, result, b):
        """A binomial test against its fixed false-positive rate."""
        from scipy.stats import binomtest

        flagged, c = self.per_fact(result, b), self.chance(result, b)
        if not flagged or c is None:
            return None
        return float(binomtest(sum(flagged), len(flagged), c, alternative="greater").pvalue)

    def verdict(self, result, alpha=ALPHA, power=POWER):
        mia = result.membership
        if mia is None or not mia.scores.get(ATTACK_SCORE) or not mia.holdout_scores.get(ATTACK_SCORE):
            return None
        return compare(self.name, mia.scores[ATTACK_SCORE], mia.holdout_scores[ATTACK_SCORE],
                       statistic=self.statistic, alpha=alpha, power=power)

    def success_label(self, b):
        return "membership (answer loss)"


ATTACK = Membership()


class ScoreMembership(Attack):
    """A membership score per fact (higher = more like a training member): a fact is flagged when its score is
    above the never-seen facts' 1 - fpr quantile (chance: fpr); the verdict compares the two score lists."""

    leaks = "forget facts score more like training members than never-seen ones"
    ranked = False
    needs = ("holdout",)
    default = False                   # named to run (issue 37: joins the default audit once bench verify calibrates it)

    def per_fact(self, result, b):
        mine, never = self.ranks(result.attacks), self.ranks(result.chance)
        if not mine or not never:
            return []
        threshold = float(np.quantile(never, 1 - FPR))
        return [v > threshold for v in mine]

    def chance(self, result, b):
        return FPR if self.ranks(result.chance) else None

    above_chance = Membership.above_chance

    def success_label(self, b):
        return f"{self.name} (above never-seen {1 - FPR:.0%})"


class GradNorm(ScoreMembership):
    """open-unlearning's GradNorm. Calibration (bench verify): the original leaks and the oracle reads
    indistinguishable on every holdout draw, but an over-suppressed model's forget answers have small gradients
    too, so it reads over-suppression as membership: weigh its "leaks" against the other attacks'."""

    name = "gradnorm"
    label = "gradient norm"
    succeeds = "the gradient of the answer's loss (mean p=2 norm over parameter tensors) is below what 95% of " \
               "never-seen facts give (open-unlearning's mia_gradnorm)"
    statistic = "-(mean gradient norm of the answer tokens' loss)"

    def run(self, model, facts, config, relearn_n=None):
        rows, n_answer = answer_rows(model, facts)
        return {self.name: [-g for g in gradient_norms(model, rows, n_answer)]}


class Reference(ScoreMembership):
    name = "reference"
    label = "reference membership"
    succeeds = "the answer's log-likelihood minus the oracle's is above what 95% of never-seen facts give " \
               "(open-unlearning's mia_reference, the retrain oracle as the reference model)"
    statistic = "answer log-likelihood minus the oracle's"
    needs = ("holdout", "oracle")
    compares_models = True
    without = "needs never-seen facts and the retrain oracle (pass oracle=: a model trained without the facts)"

    def measure_models(self, model, facts, context, config, result, role, models):
        # the reference must never have seen the facts: the oracle. The unedited model saw them, and against it a
        # deleted fact reads as over-suppressed and a kept one as indistinguishable (the attack turned round);
        # the oracle against itself is 0 on every fact, which proves nothing: both are left not computed
        ref = models.get("oracle") if role != "oracle" else None
        if ref is None or result.chance is None or not context.holdout:
            return
        for facts_, into in ((facts, result.attacks), (context.holdout, result.chance)):
            mine = answer_scores(model, facts_)["answer_loss"]
            theirs = answer_scores(ref, facts_)["answer_loss"]
            into.extra[self.name] = (mine - theirs).tolist()


GRADNORM, REFERENCE = GradNorm(), Reference()
