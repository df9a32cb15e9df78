"""Import-time fixes that let basicsr 1.4.2 import and resume on current torch/torchvision.

Each fix first probes for the breakage it repairs and does nothing when it is not there, so a basicsr or torch
release that fixes the problem makes the fix a no-op. Nothing here replaces a BasicSR function or method: where
the plugin needs BasicSR to behave differently it owns the pipeline (``cadyq_plugin/train.py``, ``test.py``) or
registers a model. :func:`apply` runs before the first ``import basicsr`` (``cadyq_plugin/__init__.py``).
"""
import collections
import importlib
import io
import sys
import types

FUNCTIONAL_TENSOR = 'torchvision.transforms.functional_tensor'


def functional_tensor_missing():
    """basicsr 1.4.2 imports ``torchvision.transforms.functional_tensor``, removed in torchvision 0.17."""
    if FUNCTIONAL_TENSOR in sys.modules:
        return False
    try:
        importlib.import_module(FUNCTIONAL_TENSOR)
    except ImportError:
        return True
    return False


def alias_functional_tensor():
    """Provide the one name basicsr uses from it (``rgb_to_grayscale``, now in ``transforms.functional``)."""
    functional = importlib.import_module('torchvision.transforms.functional')
    alias = types.ModuleType(FUNCTIONAL_TENSOR)
    alias.rgb_to_grayscale = functional.rgb_to_grayscale
    sys.modules[FUNCTIONAL_TENSOR] = alias


def counter_refused_by_weights_only():
    """BasicSR's ``MultiStepRestartLR`` keeps its milestones in a ``collections.Counter``; torch >= 2.6 loads
    with ``weights_only=True`` and refuses it unless it is an allowed global, so no training state would load."""
    import torch
    buffer = io.BytesIO()
    torch.save(collections.Counter({1: 1}), buffer)
    buffer.seek(0)
    try:
        torch.load(buffer, weights_only=True)
    except Exception:  # torch's UnpicklingError for an unsupported global
        return True
    return False


def allow_counter_in_weights_only():
    """``Counter`` is a plain dict subclass: loading one runs no code."""
    import torch
    torch.serialization.add_safe_globals([collections.Counter])


FIXES = (
    (functional_tensor_missing, alias_functional_tensor),
    (counter_refused_by_weights_only, allow_counter_in_weights_only),
)


def apply():
    """Apply every fix whose probe finds the breakage; return the names of those applied."""
    applied = []
    for probe, fix in FIXES:
        if probe():
            fix()
            applied.append(fix.__name__)
    return applied
