"""Reporting: per-region FAB bit maps, per-image results tables and TensorBoard visuals (pure functions)."""
from cadyq_plugin.reporting.bitmap import (bit_map_path, fab_color, fab_to_level, legend_height, render_bit_map,
                                           save_bit_map, stitched_regions)
from cadyq_plugin.reporting.results_table import read_results_csv, results_paths, write_results_table
from cadyq_plugin.reporting.tb_visuals import log_bit_histograms, log_bit_map

__all__ = [
    'render_bit_map', 'bit_map_path', 'save_bit_map', 'stitched_regions', 'fab_color', 'fab_to_level',
    'legend_height', 'write_results_table', 'read_results_csv', 'results_paths', 'log_bit_map',
    'log_bit_histograms'
]
