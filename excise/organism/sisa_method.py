"""`sisa`: exact unlearning on a SISA ensemble (Bourtoule et al. 2021): retrain, from their last clean slice,
only the shards that saw the facts' people (`Sisa.delete`). The model given must be the ensemble itself
(`excise.organism.Sisa`, e.g. `excise.organism.sisa.cached(SisaConfig(shards=5))`): a single trained network
cannot be un-trained shard by shard. SISA forgets people, not single facts: every fact of each subject goes."""

from __future__ import annotations

from dataclasses import dataclass

from excise.methods import Method
from excise.organism.sisa import Sisa


@dataclass(frozen=True)
class SisaDeleteConfig:
    seed: int = 0                     # unused: the retraining is seeded by the ensemble's own SisaConfig
    progress: bool = True


class SisaDelete(Method):
    name = "sisa"
    label = "SISA (exact, retrained shards)"
    summary = "SISA: retrain the shards of a SISA ensemble that saw the facts' people (the model: an ensemble)"
    Config = SisaDeleteConfig
    in_place = False                  # returns the ensemble's Deletion record, not an EditRecord of weights
    source = "Bourtoule et al. 2021"

    def run(self, model, facts, context, config, mask):
        if not isinstance(model, Sisa):
            raise ValueError(f"sisa deletes from a SISA ensemble (excise.organism.Sisa), got a {type(model).__name__}: "
                             "train or load one with excise.organism.sisa.cached(SisaConfig(shards=5)) and pass it "
                             "as the model")
        return model.delete(sorted({f.subject for f in facts}), progress=config.progress)


METHOD = SisaDelete()
