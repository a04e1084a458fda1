"""`membership`: membership inference on the answer tokens given the prompt, against never-seen facts
(`excise.verify.membership`); a fact is flagged when its answer log-likelihood is above the never-seen
facts' 1 - fpr quantile."""

from __future__ import annotations

from excise.verify.attacks.base import Attack
from excise.verify.leakage import ALPHA, POWER, compare
from excise.verify.membership import ATTACK_SCORE, membership_inference


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
