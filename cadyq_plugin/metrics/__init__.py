"""BitOPs / FAB metrics (registered into BasicSR's METRIC_REGISTRY on import) and MAC counting."""
from cadyq_plugin.metrics.bitops import (bitops_per_bit, calculate_avg_bit, calculate_bitops, forward_bitops,
                                        layer_bitops)
from cadyq_plugin.metrics.macs import LayerCost, MACCounter, count_layer_macs

__all__ = [
    'LayerCost', 'MACCounter', 'bitops_per_bit', 'calculate_avg_bit', 'calculate_bitops', 'count_layer_macs',
    'forward_bitops', 'layer_bitops'
]
