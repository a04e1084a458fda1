"""excise.edit: change only the located parameters, and record every change.

    record = excise.edit.ablate(model, fisher.to_components(32, kind="neuron"))
    record.undo(); record.apply(); record.save("edit.safetensors"); record.touched()

Every method returns an `EditRecord`; an exception during an edit restores
the weights before it propagates.
"""

from excise.edit.ablation import ablate, mean_activations
from excise.edit.rank_one import key_second_moment, planted, rank_one_update
from excise.edit.record import EditRecord, recording

__all__ = ["EditRecord", "ablate", "key_second_moment", "mean_activations", "planted",
           "rank_one_update", "recording"]
