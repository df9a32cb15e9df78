"""Attention-transfer distillation from the teacher's body output and block features (docs/method.md#training)."""
import torch.nn as nn
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY


def attention_map(x):
    """``normalize_L2_per_sample(flatten(mean_over_C(x^2)))``: where a feature map is active, ``[B, H*W]``."""
    return F.normalize(x.pow(2).mean(dim=1).flatten(1), dim=1)


def attention_transfer(x_student, x_teacher):
    """Mean over all ``B*H*W`` entries of the squared difference of the two attention maps."""
    return (attention_map(x_student) - attention_map(x_teacher)).pow(2).mean()


@LOSS_REGISTRY.register()
class ATLoss(nn.Module):
    """``loss_weight * (AT(body) + feature_weight * sum_blocks AT(f))``; reference 1e3 and 0.1."""

    def __init__(self, loss_weight=1e3, feature_weight=0.1):
        super().__init__()
        self.loss_weight = loss_weight
        self.feature_weight = feature_weight

    def forward(self, body_student, body_teacher, feats_student, feats_teacher):
        if len(feats_student) != len(feats_teacher):
            raise ValueError(f'student has {len(feats_student)} block features, teacher {len(feats_teacher)}: '
                             'distillation needs the same backbone')
        loss = attention_transfer(body_student, body_teacher)
        if self.feature_weight:
            loss = loss + self.feature_weight * sum(
                attention_transfer(fs, ft) for fs, ft in zip(feats_student, feats_teacher))
        return self.loss_weight * loss
