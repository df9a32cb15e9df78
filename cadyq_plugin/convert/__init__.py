"""Checkpoint conversion from the original CADyQ implementation (and BasicSR EDSR) to the plugin."""
from cadyq_plugin.convert.converter import convert_checkpoint, convert_state_dict

__all__ = ['convert_checkpoint', 'convert_state_dict']
