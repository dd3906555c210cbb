"""Plain supervised training, L = CE. Used for teachers and the no-KD student baseline."""

import torch.nn.functional as F
from torch import Tensor

from kdbench.method import Batch, Method, Needs, register_method
from kdbench.models import ModelOutput


@register_method
class NoDistillation(Method):
    name = "none"
    display_name = "Student (no KD)"
    color = "#999999"
    release_differences = ()  # none known

    @property
    def needs(self) -> Needs:
        return Needs(teacher=False)

    def loss(self, student: ModelOutput, teacher: None, batch: Batch, epoch: int) -> dict[str, Tensor]:
        return {"ce": F.cross_entropy(student.logits, batch.targets)}
