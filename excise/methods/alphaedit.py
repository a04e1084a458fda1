"""`alphaedit`: MEMIT with AlphaEdit's null-space projection (Fang et al. 2025): the update is projected onto
the null space of the retain facts' keys, so what the model must keep is not written over
(`excise.edit.memit` with `null_space=True`; sequential edits: `excise.edit.memit_sequence`)."""

from __future__ import annotations

from dataclasses import dataclass

from excise.edit.memit import MemitConfig, memit
from excise.methods.base import Method
from excise.methods.rank_one import BatchSiteConfig, DamageWatch, site


@dataclass(frozen=True)
class AlphaEditConfig(BatchSiteConfig):
    null_threshold: float = 2e-2      # AlphaEdit's nullspace_threshold (every hparams file), absolute
    null_ridge: float = 10.0          # AlphaEdit's L2 (MemitConfig.null_ridge)


class AlphaEdit(Method):
    name = "alphaedit"
    label = "AlphaEdit"
    summary = "AlphaEdit: MEMIT projected onto the null space of the retain facts' keys"
    Config = AlphaEditConfig
    requires = ("retain",)
    reads = ("sample", "layer")
    source = "Fang et al. 2025 (jianghoucheng/AlphaEdit)"

    def run(self, model, facts, context, config, mask):
        where = site(model, facts, context, config, self.name, spread=config.spread)
        watch = DamageWatch(model, facts, context, config, self.name)
        record = memit(model, facts, MemitConfig(layers=where.layers, null_space=True,
                                                 null_threshold=config.null_threshold, null_ridge=config.null_ridge,
                                                 position=where.position, objective=config.objective,
                                                 progress=config.progress),
                       sample=where.sample, preserve=context.retain)
        return watch.settle(model, record, where.meta)


METHOD = AlphaEdit()
