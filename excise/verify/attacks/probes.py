"""`probes`: black-box probing under every prompt family (request, paraphrase, question, completion, held-out)."""

from __future__ import annotations

from excise.facts import FAMILIES
from excise.verify.attacks.base import Attack
from excise.verify.probes import probe


class Probes(Attack):
    name = "probes"
    succeeds = "the target is in the top-B (default 20) after any prompt of any family (request, paraphrase, " \
               "question, completion, held-out)"
    statistic = "-(best probe rank over families)"

    def run(self, model, facts, config, relearn_n=None):
        rows = probe(model, facts, FAMILIES, config.top_b)
        return {self.name: best_ranks(rows, facts, lambda r: r.rank), "probe_rows": [r.to_dict() for r in rows]}


def best_ranks(rows, facts, rank) -> list[int]:
    """Per fact, the best (lowest) rank over its rows (10^9 where it has none)."""
    best = {f.key: None for f in facts}
    for r in rows:
        k = (r.subject, r.relation)
        best[k] = rank(r) if best[k] is None else min(best[k], rank(r))
    return [best[f.key] if best[f.key] is not None else 10**9 for f in facts]


ATTACK = Probes()
