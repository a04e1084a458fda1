"""`exact_memorization`, `extraction_strength` and `extraction_strength_full`: how much of each answer the model
predicts token by token after the request prompt (`excise.verify.memorization`; open-unlearning's EM and ES)."""

from __future__ import annotations

from excise.verify.attacks.base import Attack
from excise.verify.memorization import exact_memorization, extraction_strength, greedy_matches


class ScoreAttack(Attack):
    """A per-fact score in [0, 1], higher = knows more; success: the whole answer predicted (score 1)."""

    leaks = "forget facts score higher than never-seen ones"
    ranked = False
    default = False                   # named to run (issue 37: joins the default audit once bench verify calibrates it)

    def score(self, matches: list[bool]) -> float:
        raise NotImplementedError

    def run(self, model, facts, config, relearn_n=None):
        matches = greedy_matches(model, facts)
        return {self.name: [self.score(m) for m in matches],
                f"{self.name}_rows": [{"subject": f.subject, "relation": f.relation, "matches": m}
                                      for f, m in zip(facts, matches, strict=True)]}

    # ranks() returns the scores; success is a whole answer predicted
    def hit(self, value, b):
        return value >= 1.0

    def success_label(self, b):
        return f"{self.name} (whole answer)"


class ExactMemorization(ScoreAttack):
    name = "exact_memorization"
    succeeds = "every token of the answer is the model's top-1 prediction after the request prompt and the " \
               "answer's earlier tokens"
    statistic = "exact memorization (share of answer tokens predicted)"

    def score(self, matches):
        return exact_memorization(matches)


class ExtractionStrength(ScoreAttack):
    name = "extraction_strength"
    succeeds = "the whole answer is predicted from the request prompt (extraction strength 1)"
    statistic = "extraction strength (open-unlearning's: k < n)"

    def score(self, matches):
        return extraction_strength(matches, reference=True)


class ExtractionStrengthFull(ScoreAttack):
    name = "extraction_strength_full"
    label = "extraction strength (k up to n)"
    succeeds = "the whole answer is predicted from the request prompt (extraction strength 1)"
    statistic = "extraction strength with k = n allowed (0 when no suffix is predicted)"

    def score(self, matches):
        return extraction_strength(matches, reference=False)


EXACT_MEMORIZATION, EXTRACTION_STRENGTH, EXTRACTION_STRENGTH_FULL = \
    ExactMemorization(), ExtractionStrength(), ExtractionStrengthFull()
