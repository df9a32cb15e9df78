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


def patch_reliability():
    """Crash-safety and exact resume for basicsr 1.4.2's training loop (idempotent; :mod:`cadyq_plugin.resume`,
    :mod:`cadyq_plugin.models.step_guard`). Called by ``cli.run_pipeline`` for train and test. Fixes:

    - ``BaseModel.save_network`` / ``save_training_state`` wrote with ``torch.save`` straight onto the final
      name (a crash mid-write left a truncated file where a good one was) and ignored a failed save after three
      tries. Now written by :func:`cadyq_plugin.checkpoint.atomic_save` (temporary file + rename), three tries,
      then an error: training does not go on for days without checkpoints.
    - A training state now also holds the generator states (Python, NumPy, torch) and the step guard's count of
      consecutive bad steps, as tensors and plain numbers (it still loads with ``weights_only=True``).
    - ``load_resume_state`` (after :func:`patch_training_pipeline`'s CPU fix): an unreadable state is a
      :class:`~cadyq_plugin.checkpoint.CheckpointError` naming the file; stale temporary files of killed saves are
      removed; the state is handed to the dataloader.
    - BasicSR's ``EnlargedSampler`` restarted the resumed epoch from its first batch and the generators from their
      seeds. The train sampler is now :class:`~cadyq_plugin.resume.ResumableSampler`: it skips the batches the
      interrupted run consumed and restores the saved generator states, so the resumed run draws exactly the
      batches (and crops) the uninterrupted run would have.
    - ``BaseModel.validation`` leaves the global generators as it found them, so validating (or not) never
      changes what training draws next.
    - ``SRModel.load_network`` (stage 1, and any SRModel use): ``weights_only`` loading, and for CADyQ archs the
      strict stage-aware loading of :mod:`cadyq_plugin.models.stage_loading` (``strict_load_g: false`` cannot
      load a checkpoint of another backbone, mode or scale silently). Other archs keep BasicSR's strict flag.
    - ``SRModel.optimize_parameters`` (stage 1): the optimizer step is skipped when the output or a gradient is
      not finite, and ``train.max_bad_steps`` such steps in a row stop training (CADyQModel does this itself).
    """
    import time

    from basicsr import train
    from basicsr.models.base_model import BaseModel
    from basicsr.models.sr_model import SRModel
    from basicsr.utils import get_root_logger
    from basicsr.utils.dist_util import get_dist_info, master_only

    from cadyq_plugin import resume
    from cadyq_plugin.checkpoint import CheckpointError, atomic_save, extract_state_dict, load_checkpoint
    from cadyq_plugin.models import step_guard

    if getattr(BaseModel.save_network, '_cadyq_patched', False):
        return

    def save_with_retry(obj, save_path, what):
        error = None
        for attempt in range(3):
            try:
                atomic_save(obj, save_path)
                return
            except OSError as err:
                error = err
                get_root_logger().warning(f'cannot save {what} {save_path}: {err} (try {attempt + 1} of 3)')
                time.sleep(1)
        raise CheckpointError(f'cannot save {what} {save_path!r}: {error}; the previous checkpoints are intact, '
                              'free space or fix the folder and run again with --auto_resume')

    @master_only
    def save_network(self, net, net_label, current_iter, param_key='params'):
        label = 'latest' if current_iter == -1 else current_iter
        save_path = os.path.join(self.opt['path']['models'], f'{net_label}_{label}.pth')
        nets = net if isinstance(net, list) else [net]
        param_keys = param_key if isinstance(param_key, list) else [param_key]
        if len(nets) != len(param_keys):
            raise ValueError('save_network needs one param_key per network')
        save_dict = {}
        for net_, param_key_ in zip(nets, param_keys):
            state_dict = self.get_bare_model(net_).state_dict()
            save_dict[param_key_] = {(k[len('module.'):] if k.startswith('module.') else k): v.cpu()
                                     for k, v in state_dict.items()}
        save_with_retry(save_dict, save_path, 'network')

    def save_training_state(self, epoch, current_iter):
        if current_iter == -1:
            return
        rng_states = resume.gather_rng_states()  # a collective: every rank's generators, in rank order
        if get_dist_info()[0] != 0:
            return
        state = {'epoch': epoch, 'iter': current_iter, 'optimizers': [o.state_dict() for o in self.optimizers],
                 'schedulers': [s.state_dict() for s in self.schedulers]}
        guard = getattr(self, 'step_guard', None)
        state[resume.STATE_KEY] = {'rng': rng_states[0], 'rng_per_rank': rng_states,
                                   'bad_steps': guard.bad_steps if guard else 0}
        save_path = os.path.join(self.opt['path']['training_states'], f'{current_iter}.state')
        save_with_retry(state, save_path, 'training state')

    base_resume_training = BaseModel.resume_training

    def resume_training(self, resume_state):
        base_resume_training(self, resume_state)
        extra = resume_state.get(resume.STATE_KEY) or {}
        step_guard.get_step_guard(self).bad_steps = int(extra.get('bad_steps', 0))

    base_validation = BaseModel.validation

    def validation(self, dataloader, current_iter, tb_logger, save_img=False):
        with resume.preserved_rng_state():
            return base_validation(self, dataloader, current_iter, tb_logger, save_img)

    base_load_network = SRModel.load_network

    def load_network(self, net, load_path, strict=True, param_key='params'):
        from cadyq_plugin.archs.cadyq_net import CADyQNet
        from cadyq_plugin.models.stage_loading import load_stage_weights
        bare = self.get_bare_model(net)
        if not isinstance(bare, CADyQNet):
            load_checkpoint(load_path)  # refuses anything but tensors and plain values before BasicSR loads it
            return base_load_network(self, net, load_path, strict, param_key)
        state_dict = extract_state_dict(load_checkpoint(load_path), load_path, keys=(param_key, 'params'))
        initial = load_stage_weights(bare, state_dict, f'checkpoint {load_path!r}')
        get_root_logger().info(f'Loaded {type(bare).__name__} from {load_path} [{param_key}]' +
                               (f'; {len(initial)} quantizer entries start from their initial values' if initial
                                else '') + ('' if strict else ' (strict_load false is ignored for CADyQ archs)'))

    base_optimize = SRModel.optimize_parameters

    def optimize_parameters(self, current_iter):
        guard = step_guard.get_step_guard(self)
        guard.snapshot(self.get_bare_model(self.net_g))
        optimizer = self.optimizer_g
        own_step = optimizer.__dict__.get('step')  # an instance attribute (a scheduler's wrapper) or None
        step = optimizer.step
        outcome = {}

        def guarded_step(*args, **kwargs):
            outcome['ok'] = guard.finite([self.output.detach()], [optimizer])
            return step(*args, **kwargs) if outcome['ok'] else None

        optimizer.step = guarded_step
        try:
            base_optimize(self, current_iter)
        finally:
            if own_step is None:
                del optimizer.step
            else:
                optimizer.step = own_step
        if outcome.get('ok') is False:
            guard.bad_step([optimizer], current_iter, self.log_dict, get_root_logger(),
                           step_guard.checkpoint_dirs(self))
        elif outcome.get('ok'):
            guard.good_step()

    base_load_resume_state = train.load_resume_state

    def load_resume_state(opt):
        if opt.get('auto_resume') or opt['path'].get('resume_state'):
            _remove_stale_temporaries(opt)
        try:
            state = base_load_resume_state(opt)
        except CheckpointError:
            raise
        except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError ... for a bad file
            path = opt['path'].get('resume_state')
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            reason = next((line for line in lines if 'Unsupported global' in line), lines[0] if lines else '')
            raise CheckpointError(f'cannot load training state {path!r} with weights_only=True: '
                                  f'{type(err).__name__}: {reason}. Move it out of training_states to resume from the '
                                  'previous one') from err
        resume.set_pending_resume(state)
        return state

    base_dataloaders = train.create_train_val_dataloader

    def create_train_val_dataloader(opt, logger):
        result = base_dataloaders(opt, logger)
        train_loader, train_sampler = result[0], result[1]
        state = resume.take_pending_resume()
        if isinstance(train_sampler, resume.ResumableSampler):
            train_sampler.seed = opt.get('manual_seed') or 0
            if state is not None:
                extra = state.get(resume.STATE_KEY) or {}
                consumed = resume.consumed_batches(state['epoch'], state['iter'], len(train_loader))
                if consumed is None:
                    logger.warning(f'resume: iteration {state["iter"]} is not in epoch {state["epoch"]} with '
                                   f'{len(train_loader)} batches per epoch (data or batch size changed?): the '
                                   'epoch restarts from its first batch')
                else:
                    logger.info(f'resume: epoch {state["epoch"]} continues after its first {consumed} batches')
                train_sampler.resume(state['epoch'], (consumed or 0) * train_loader.batch_size,
                                     resume.rng_state_for_rank(extra, opt['rank']))
        return result

    save_network._cadyq_patched = True
    BaseModel.save_network = save_network
    BaseModel.save_training_state = save_training_state
    BaseModel.resume_training = resume_training
    BaseModel.validation = validation
    SRModel.load_network = load_network
    SRModel.optimize_parameters = optimize_parameters
    train.load_resume_state = load_resume_state
    train.create_train_val_dataloader = create_train_val_dataloader
    train.EnlargedSampler = resume.ResumableSampler


def _remove_stale_temporaries(opt):
    """Delete the temporary files of saves that a killed run never finished (``.<name>.<random>.tmp`` beside
    ``models/*.pth`` and ``training_states/*.state``): they are incomplete by construction."""
    import re
    pattern = re.compile(r'^\..+\.(pth|state)\.[A-Za-z0-9_]+\.tmp$')
    root = os.path.join('experiments', opt['name'])
    for sub in ('models', 'training_states'):
        folder = os.path.join(root, sub)
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            if pattern.match(name):
                os.remove(os.path.join(folder, name))
                print(f'removed {os.path.join(folder, name)}: an unfinished save of an interrupted run')
