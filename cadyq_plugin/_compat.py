"""Runtime fixes that let basicsr 1.4.2 run on current torch/torchvision, CPU included.

Each fix is guarded: it only applies when the thing it repairs is actually broken or missing, so a future
basicsr release that fixes the problem upstream makes the fix a no-op. This module must be imported before
the first ``import basicsr`` (``cadyq_plugin/__init__.py`` does so).
"""
import collections
import importlib
import sys
import types


def _alias_functional_tensor():
    """basicsr 1.4.2 imports ``torchvision.transforms.functional_tensor``, removed in torchvision 0.17."""
    name = 'torchvision.transforms.functional_tensor'
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
    except ImportError:
        functional = importlib.import_module('torchvision.transforms.functional')
        alias = types.ModuleType(name)
        alias.rgb_to_grayscale = functional.rgb_to_grayscale
        sys.modules[name] = alias


def _allow_counter_in_weights_only_load():
    """BasicSR's MultiStepRestartLR keeps its milestones in a ``collections.Counter``; torch >= 2.6 loads
    training states with ``weights_only=True`` and would refuse it. Counter is a plain dict subclass."""
    import torch
    add_safe_globals = getattr(torch.serialization, 'add_safe_globals', None)
    if add_safe_globals is not None:
        add_safe_globals([collections.Counter])


def apply():
    _alias_functional_tensor()
    _allow_counter_in_weights_only_load()
