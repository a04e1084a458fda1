"""`kl`: gradient ascent on the forget answers plus KL(original || current) at the retain answer positions."""

from __future__ import annotations

from dataclasses import dataclass

from excise.edit.unlearn import UnlearnConfig
from excise.methods.ga import Ga


@dataclass(frozen=True)
class KlConfig(UnlearnConfig):
    """`UnlearnConfig`'s defaults; the retain term is the KL to the original model."""


class Kl(Ga):
    name = "kl"
    label = "KL"
    summary = "gradient ascent on the forget NLL, KL to the original on the retain answers"
    Config = KlConfig
    retain_term = "kl"
    requires = ("retain",)
    source = "Maini et al. 2024 (TOFU's KL baseline)"


METHOD = Kl()
