"""`rmu`, representation misdirection (Li et al. 2024, WMDP): steer the forget facts' activations at one layer
to a random vector, hold the retain facts' where the original puts them (`excise.edit.rmu`)."""

from __future__ import annotations

from excise.edit.rmu import RmuConfig, rmu
from excise.methods.base import Method


class Rmu(Method):
    name = "rmu"
    label = "RMU (WMDP)"
    summary = "RMU (WMDP): scramble the forget activations at one layer, hold the retain ones"
    Config = RmuConfig                # WMDP's code defaults, scaled to the model (see RmuConfig)
    requires = ("retain",)
    source = "Li et al. 2024; centerforaisafety/wmdp rmu/unlearn.py"

    def run(self, model, facts, context, config, mask):
        # its own layers (WMDP's MLP output matrices) unless a bench passes located components
        return rmu(model, facts, context.retain, mask=mask, config=config)


METHOD = Rmu()
