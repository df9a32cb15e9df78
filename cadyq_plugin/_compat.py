"""Runtime fixes that let basicsr 1.4.2 run on current torch/torchvision, CPU included.

Each fix is guarded: it only applies when the thing it repairs is actually broken or missing, so a future
basicsr release that fixes the problem upstream makes the fix a no-op. This module must be imported before
the first ``import basicsr`` (``cadyq_plugin/__init__.py`` does so).
"""
import collections
import os
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


def patch_training_pipeline():
    """basicsr 1.4.2's ``load_resume_state`` maps the state onto ``torch.cuda.current_device()``, which fails
    on a CPU-only machine. Replace it with one that loads on the CPU (``weights_only``); optimizers move their
    state to the parameters' device when they load it."""
    import torch
    from basicsr import train
    from basicsr.utils import check_resume, scandir

    if getattr(train.load_resume_state, '_cadyq_patched', False):
        return

    def load_resume_state(opt):
        resume_state_path = None
        if opt['auto_resume']:
            state_dir = os.path.join('experiments', opt['name'], 'training_states')
            if os.path.isdir(state_dir):
                states = [name for name in scandir(state_dir, suffix='state', recursive=False, full_path=False)]
                if states:
                    latest = max(int(float(name.split('.state')[0])) for name in states)
                    resume_state_path = os.path.join(state_dir, f'{latest}.state')
                    opt['path']['resume_state'] = resume_state_path
        elif opt['path'].get('resume_state'):
            resume_state_path = opt['path']['resume_state']
        if resume_state_path is None:
            return None
        resume_state = torch.load(resume_state_path, map_location='cpu', weights_only=True)
        check_resume(opt, resume_state['iter'])
        return resume_state

    load_resume_state._cadyq_patched = True
    train.load_resume_state = load_resume_state
