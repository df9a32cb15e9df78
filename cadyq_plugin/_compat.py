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
    from basicsr.utils import scandir

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
        _check_resume_keeping_unsaved(opt, resume_state['iter'])
        return resume_state

    load_resume_state._cadyq_patched = True
    train.load_resume_state = load_resume_state


def _check_resume_keeping_unsaved(opt, resume_iter):
    """BasicSR's ``check_resume`` points every ``pretrain_network_<x>`` at ``models/net_<x>_<iter>.pth``, but a
    model saves only ``net_g``: the frozen teacher ``network_t`` of stages 2-3 has no such file and resuming
    failed. Networks other than ``network_g`` whose resume file does not exist keep their configured weights;
    a missing student file still fails loudly when it is loaded."""
    from basicsr.utils import check_resume
    configured = {key: value for key, value in opt['path'].items() if key.startswith('pretrain_network_')}
    check_resume(opt, resume_iter)
    for key, path in configured.items():
        if key != 'pretrain_network_g' and path and not os.path.isfile(opt['path'][key]):
            print(f'{opt["path"][key]} does not exist (a frozen network is never saved): keep {key} = {path}')
            opt['path'][key] = path


def patch_distributed():
    """Distributed training and validation on CPU (gloo) and GPU (nccl) for basicsr 1.4.2, all routed to
    :mod:`cadyq_plugin.distributed` (one implementation for SRModel and CADyQModel). Idempotent. Fixes:

    - ``init_dist``: nccl-only and ``torch.cuda.set_device(rank % 0)`` on a CPU machine; ``dist_params`` was
      ignored by the pytorch launcher. Now the backend is ``dist_params.backend`` or nccl/gloo by device.
    - ``BaseModel.model_to_device``: ``DistributedDataParallel(device_ids=[torch.cuda.current_device()])``
      failed on CPU; now no device ids on CPU, and calibrated ranges stay synchronised across ranks.
    - ``SRModel.dist_validation`` ran on rank 0 only, through the DDP wrapper, whose forward broadcasts buffers:
      the other ranks' next training forward was paired with it. Now sharded over ranks on the bare network.
      ``SRModel.test`` runs the bare network too.
    - ``make_exp_dirs`` (rank 0 only, may rename an existing experiment) is followed by a barrier so that no rank
      writes into a folder that is about to be renamed.
    """
    from basicsr import test as test_module
    from basicsr import train as train_module
    from basicsr.models.base_model import BaseModel
    from basicsr.models.sr_model import SRModel
    from basicsr.utils import dist_util, options

    from cadyq_plugin import distributed

    if getattr(options.init_dist, '_cadyq_patched', False):
        return

    def init_dist(launcher, **dist_params):
        params = distributed.dist_options_from_argv(sys.argv[1:])
        params.update(dist_params)
        distributed.init_dist(launcher, **params)

    def model_to_device(self, net):
        return distributed.wrap_model(net, self.opt, self.device)

    def dist_validation(self, dataloader, current_iter, tb_logger, save_img):
        distributed.dist_validation(self, dataloader, current_iter, tb_logger, save_img)

    def with_barrier(make_exp_dirs):

        def make_exp_dirs_then_wait(opt):
            make_exp_dirs(opt)
            distributed.barrier()

        return make_exp_dirs_then_wait

    init_dist._cadyq_patched = True
    options.init_dist = dist_util.init_dist = init_dist
    BaseModel.model_to_device = model_to_device
    SRModel.test = distributed.sr_test
    SRModel.dist_validation = dist_validation
    train_module.make_exp_dirs = with_barrier(train_module.make_exp_dirs)
    test_module.make_exp_dirs = with_barrier(test_module.make_exp_dirs)
