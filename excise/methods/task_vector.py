"""`task_vector`, task-vector negation (Ilharco et al. 2023): fine-tune on the forget facts, subtract alpha x
the change (`excise.edit.task_vector`)."""

from __future__ import annotations

from excise.edit.unlearn import TaskVectorConfig, task_vector
from excise.methods.base import Method


class TaskVector(Method):
    name = "task_vector"
    label = "task-vector negation"
    summary = "task-vector negation: fine-tune on the facts, subtract the change"
    Config = TaskVectorConfig
    mask = "optional"
    source = "Ilharco et al. 2023"

    def run(self, model, facts, context, config, mask):
        return task_vector(model, facts, mask=mask, config=config)


METHOD = TaskVector()
