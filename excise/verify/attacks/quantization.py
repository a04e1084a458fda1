"""`quantization`: the request prompts asked of the model with its weights rounded to 8 and to 4 bits."""

from __future__ import annotations

from excise.verify.attacks.base import Attack
from excise.verify.attacks.probes import best_ranks
from excise.verify.probes import probe
from excise.verify.quantize import quantized

BITS = (8, 4)


class Quantization(Attack):
    name = "quantization"
    succeeds = "the target is in the top-B after the request prompt, with the weights rounded to 8 or to 4 bits " \
               "(per output channel, round to nearest: excise.verify.quantize)"
    statistic = "-(best request rank over 8- and 4-bit weights)"
    default = False                   # named to run (issue 37: joins the default audit once bench verify calibrates it)

    def run(self, model, facts, config, relearn_n=None):
        found, rows = [], []
        for bits in BITS:
            copy = quantized(model, bits)
            asked = probe(copy, facts, ("request",), config.top_b)
            del copy
            found += asked
            rows += [r.to_dict() | {"bits": bits} for r in asked]
        return {self.name: best_ranks(found, facts, lambda r: r.rank), f"{self.name}_rows": rows}


ATTACK = Quantization()
