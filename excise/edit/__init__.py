"""excise.edit: change only the located parameters, and record every change.

    record = excise.edit.rome(model, fact, excise.edit.RomeConfig(layer=0, objective="erase"))
    record = excise.edit.ablate(model, fisher.to_components(32, kind="neuron"))
    record = excise.edit.rmu(model, forget, retain)
    record.undo(); record.apply(); record.save("edit.safetensors"); record.touched()

Every edit returns an `EditRecord`; an exception during an edit restores
the weights before it propagates. The deletion methods under one name each
(npo, swap, rome, alphaedit, ...) are `excise.methods`; the gradient ones
share `unlearn_with`, the loop here, and differ by their `ForgetLoss`.
"""

from excise.edit.ablation import ablate, mean_activations
from excise.edit.masks import random_like
from excise.edit.memit import AlphaEditState, MemitConfig, memit, memit_sequence
from excise.edit.rank_one import key_second_moment, planted, rank_one_update
from excise.edit.record import EditRecord, recording
from excise.edit.rmu import RmuConfig, rmu
from excise.edit.rome import RomeConfig, rome, rome_each
from excise.edit.sequence import EditSequence, sequence
from excise.edit.undo import UndoConfig, undo
from excise.edit.unlearn import ForgetLoss, TaskVectorConfig, UnlearnConfig, task_vector, unlearn_with
from excise.generation import generated_sample

# In reading order (the API reference follows it): the methods, what they return, their configs, the helpers.
__all__ = ["rome", "rome_each", "memit", "memit_sequence", "unlearn_with", "ForgetLoss", "rmu", "undo", "UndoConfig", "task_vector", "ablate", "sequence",
           "EditRecord", "EditSequence", "RomeConfig", "MemitConfig", "AlphaEditState", "UnlearnConfig", "RmuConfig",
           "TaskVectorConfig", "recording", "rank_one_update", "key_second_moment", "planted", "generated_sample",
           "mean_activations", "random_like"]
