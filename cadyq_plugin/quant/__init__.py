"""The CADyQ quantization core, plain PyTorch (no BasicSR imports)."""
from cadyq_plugin.quant.act_quant import NoQuant, PAMSQuant, levels, pams_quantize
from cadyq_plugin.quant.bit_record import BitRecord
from cadyq_plugin.quant.bit_selector import BitSelector, check_candidate_bits
from cadyq_plugin.quant.image_feature import image_gradient_feature
from cadyq_plugin.quant.modes import QUANT_MODES, ActQuantFactory, assign_selector_indices, set_backend, set_calibration
from cadyq_plugin.quant.weight_quant import QConv2d, quantize_weight

__all__ = [
    'ActQuantFactory', 'BitRecord', 'BitSelector', 'NoQuant', 'PAMSQuant', 'QConv2d', 'QUANT_MODES',
    'assign_selector_indices', 'check_candidate_bits', 'image_gradient_feature', 'levels', 'pams_quantize',
    'quantize_weight', 'set_backend', 'set_calibration'
]
