"""Attention-transfer distillation from the teacher's body output and block features (docs/method.md#training)."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY


def attention_map(x):
    """``normalize_L2_per_sample(flatten(mean_over_C(x^2)))``: where a feature map is active, ``[B, H*W]``."""
    return F.normalize(x.pow(2).mean(dim=1).flatten(1), dim=1)


def attention_transfer(x_student, x_teacher):
    """Mean over all ``B*H*W`` entries of the squared difference of the two attention maps."""
    return (attention_map(x_student) - attention_map(x_teacher)).pow(2).mean()


def attention_transfers(students, teachers):
    """``[attention_transfer(s, t) for s, t in zip(students, teachers)]`` as one tensor, computed on the stacked
    maps of all pairs whose maps have one size (every block of a backbone, usually): a few operations for all
    blocks instead of a dozen per block."""
    maps = [(x_s.pow(2).mean(dim=1).flatten(1), x_t.pow(2).mean(dim=1).flatten(1))
            for x_s, x_t in zip(students, teachers)]
    if len({m_s.shape for m_s, _ in maps} | {m_t.shape for _, m_t in maps}) != 1:
        return torch.stack([(F.normalize(m_s, dim=1) - F.normalize(m_t, dim=1)).pow(2).mean() for m_s, m_t in maps])
    stacked_s, stacked_t = (torch.stack([pair[i] for pair in maps]) for i in (0, 1))
    return (F.normalize(stacked_s, dim=2) - F.normalize(stacked_t, dim=2)).pow(2).mean(dim=(1, 2))


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
        if not self.feature_weight:
            return self.loss_weight * attention_transfer(body_student, body_teacher)
        transfers = attention_transfers([body_student] + list(feats_student), [body_teacher] + list(feats_teacher))
        return self.loss_weight * (transfers[0] + self.feature_weight * transfers[1:].sum())
