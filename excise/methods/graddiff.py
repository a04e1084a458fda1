"""`graddiff`: gradient ascent on the forget answers (ga's forget term) plus the NLL of the retain answers."""

from __future__ import annotations

from dataclasses import dataclass

from excise.edit.unlearn import UnlearnConfig
from excise.methods.ga import Ga


@dataclass(frozen=True)
class GradDiffConfig(UnlearnConfig):
    """`UnlearnConfig`'s defaults: retain weight 1 (open-unlearning's GradDiff alpha 1)."""


class GradDiff(Ga):
    name = "graddiff"
    label = "GradDiff"
    summary = "gradient difference: ascend the forget NLL, descend the retain NLL"
    Config = GradDiffConfig
    retain_term = "nll"
    requires = ("retain",)
    source = "Liu et al. 2022; open-unlearning GradDiff"


METHOD = GradDiff()
