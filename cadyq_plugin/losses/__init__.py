"""Losses, registered into BasicSR's LOSS_REGISTRY on import."""
from cadyq_plugin.losses.bit_loss import BitLoss
from cadyq_plugin.losses.distill_loss import ATLoss, attention_map, attention_transfer

__all__ = ['ATLoss', 'BitLoss', 'attention_map', 'attention_transfer']
