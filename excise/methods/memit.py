"""`memit`: all facts in one least-squares update of an MLP output matrix (Meng et al. 2023;
`excise.edit.memit`), its values optimized through the write."""

from __future__ import annotations

from dataclasses import dataclass

from excise.edit.memit import MemitConfig, memit
from excise.methods.base import Method
from excise.methods.rank_one import BatchSiteConfig, DamageWatch, site

# MEMIT's lambda for deletion, set by the share of the value shift a fact's own key should reach. For one key k,
# Delta = (lambda C + k k^T)^-1 k r^T moves k's output by r * a / (1 + a), a = k^T C^-1 k / lambda, and
# E[k^T C^-1 k] = d_mlp over the sample's keys (C = E[k k^T]): a fixed lambda reaches less the narrower the MLP.
# Measured at layer 0 on the foreign test models (tests/foreign.py, 3 facts, training text as sample): k^T C^-1 k
# 268-298 (GPT-2, d_mlp 256) and 114-204 (Llama, d_mlp 172); reached share (= a/(1+a) to 0.01) with lambda
# 300: 0.47-0.51 / 0.27-0.40, request recall after 1.00 / 1.00; lambda 30: 0.90-0.91 / 0.79-0.87, recall
# 1.00 / 0.33 (other subjects kept 0.98 / 1.00); lambda 1: 1.00 / 0.99, recall 1.00 / 0.33. On the organism
# (d_mlp 512) the old 300 reached about 0.63. lambda = d_mlp * (1 - reach) / reach: 0.9 of the shift for a
# typical key (d_mlp / 9: organism 57, GPT-2 28, Llama 19).
MEMIT_REACH = 0.9


def memit_weight(d_mlp: int, reach: float = MEMIT_REACH) -> float:
    """MEMIT's mom2_weight that lets a typical key (k^T C^-1 k = d_mlp) reach `reach` of its value shift."""
    if not 0 < reach < 1:
        raise ValueError(f"reach must be in (0, 1), got {reach}")
    return d_mlp * (1 - reach) / reach


@dataclass(frozen=True)
class MemitMethodConfig(BatchSiteConfig):
    reach: float = MEMIT_REACH        # lambda = memit_weight(d_mlp, reach) (see MEMIT_REACH)
    mom2_weight: float | None = None  # lambda itself; None: from `reach`
    through_edit: bool = True         # values optimized through the write (MemitConfig.through_edit; one layer only)


class Memit(Method):
    name = "memit"
    label = "MEMIT"
    summary = "MEMIT: every fact in one least-squares update over the layers the trace supports"
    Config = MemitMethodConfig
    reads = ("sample", "layer")
    source = "Meng et al. 2023 (kmeng01/memit)"

    def run(self, model, facts, context, config, mask):
        where = site(model, facts, context, config, self.name, spread=config.spread)
        watch = DamageWatch(model, facts, context, config, self.name)
        weight = config.mom2_weight if config.mom2_weight is not None else memit_weight(model.cfg.d_mlp, config.reach)
        through = config.through_edit and len(where.layers) == 1
        record = memit(model, facts, MemitConfig(layers=where.layers, mom2_weight=weight,
                                                 through_edit=through, position=where.position,
                                                 objective=config.objective, progress=config.progress),
                       sample=where.sample)
        return watch.settle(model, record, where.meta)


METHOD = Memit()
