"""excise.edit: change only the located parameters, and record every change.

    record = excise.edit.rome(model, fact, excise.edit.RomeConfig(layer=0, objective="erase"))
    record = excise.edit.ablate(model, fisher.to_components(32, kind="neuron"))
    record.undo(); record.apply(); record.save("edit.safetensors"); record.touched()

Every method returns an `EditRecord`; an exception during an edit restores
the weights before it propagates.
"""

from excise.edit.ablation import ablate, mean_activations
from excise.edit.rank_one import key_second_moment, planted, rank_one_update
from excise.edit.record import EditRecord, recording
from excise.edit.rome import RomeConfig, rome

__all__ = ["EditRecord", "RomeConfig", "ablate", "key_second_moment", "mean_activations", "planted",
           "rank_one_update", "recording", "rome"]
