"""CADyQSRModel: BasicSR's SRModel made crash-safe, CPU-capable and bit-aware; stage 1 and the base of CADyQModel.

Everything here concerns any SR network, quantized or not; :class:`~cadyq_plugin.models.CADyQModel` adds only
the teacher, the distillation and the bit loss. Beyond ``SRModel``:

- **Devices**: DDP on the CPU (gloo, no ``device_ids``) with the calibration ranges kept in sync across ranks,
  and DataParallel with the replicas' ranges combined (:func:`cadyq_plugin.distributed.wrap_model`); the device
  with its index (``cuda:<current>``), so every tensor a step makes is on the network's device.
- **No host syncs in a steady-state step on a GPU**: batches are copied with ``non_blocking`` (pinned by the
  loader on CUDA runs), the step guard decides on the device (Adam, AdamW and SGD run fused on CUDA, which can
  skip a step without the CPU reading a flag), and the logged losses are summed on the device and read at
  ``print_freq`` iterations only (:mod:`loss_log`).
- **Loading**: checkpoints are read with ``weights_only=True``; CADyQ archs load stage-aware and strictly
  (:mod:`stage_loading`: only quantizer/selector entries of an earlier stage may be missing, ``strict_load_g:
  false`` cannot load another backbone, mode or scale silently); other archs keep BasicSR's ``strict`` flag.
- **Saving**: networks and training states are written atomically, with the permissions of the user's umask,
  three tries then a :class:`~cadyq_plugin.checkpoint.CheckpointError`; a training state also holds every
  rank's generator states, the step guard's count of bad steps and the open window of logged losses (plain
  tensors and numbers).
- **Steps**: PAMS calibration during the first ``network_g.calib_iters`` iterations; a step whose loss or
  gradients are not finite is skipped and undone, ``train.max_bad_steps`` in a row stop the run
  (:mod:`step_guard`; checked after every step on the CPU, at ``print_freq`` iterations and saves on a GPU);
  parameter groups for weights (``optim_g``), PAMS ranges (``optim_alpha``) and selectors (``optim_selector``, a
  separate optimizer); ``avg_bit`` of the training batches is logged (the mean since the previous log line).
- **Inference**: on the bare network (or ``net_g_ema``), image-wise or ``val.patchwise``, with each forward
  pass's bits and MACs (:func:`cadyq_plugin.inference.super_resolve`); validation is sharded over ranks and
  never changes the generators training draws from; FAB/BitOPs metrics, bit maps, TensorBoard bit histograms and
  results tables.
"""
import inspect
from collections import OrderedDict
from os import path as osp

import torch
from basicsr.metrics import calculate_metric
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import MODEL_REGISTRY
from tqdm import tqdm

from cadyq_plugin.archs.cadyq_net import CADyQNet
from cadyq_plugin.checkpoint import CheckpointError, extract_state_dict, load_checkpoint, save_with_retry
from cadyq_plugin.deploy import INT8_KEY, load_int8_state_dict
from cadyq_plugin.distributed import get_dist_info, wrap_model
from cadyq_plugin.inference import super_resolve
from cadyq_plugin.metrics import MACCounter
from cadyq_plugin.models.compiling import NetworkCompiler, compiled_training_step
from cadyq_plugin.models.loss_log import LossLog
from cadyq_plugin.models.stage_loading import load_stage_weights
from cadyq_plugin.models.step_guard import DEFAULT_MAX_BAD_STEPS, StepGuard, checkpoint_dirs, skips_on_device
from cadyq_plugin.models.validation import average_rows, dist_validation, visualization_path
from cadyq_plugin.quant import BitSelector, PAMSQuant, set_calibration
from cadyq_plugin.reporting import (log_bit_histograms, log_bit_map, render_bit_map, save_bit_map,
                                    write_results_table)
from cadyq_plugin.resume import STATE_KEY, gather_rng_states, preserved_rng_state

# The option keys read here beyond BasicSR's SRModel, by section (the options check accepts them)
OPTION_KEYS = {'train': ('optim_alpha', 'optim_selector', 'max_bad_steps'), 'val': ('patchwise', 'tb_bit_maps')}


@MODEL_REGISTRY.register()
class CADyQSRModel(SRModel):
    """SRModel for any SR arch with the behaviour listed in the module doc (``model_type: CADyQSRModel``).

    Options beyond SRModel's: ``train.optim_alpha`` (PAMS ranges: a second param group of the weight optimizer),
    ``train.optim_selector`` (bit selectors: a separate optimizer), ``train.max_bad_steps``, ``val.patchwise``
    (``{patch, step, batch}``) and ``val.tb_bit_maps`` (bit maps of the first N validation images in TensorBoard).
    """

    def __init__(self, opt):
        self.step_guard = StepGuard((opt.get('train') or {}).get('max_bad_steps', DEFAULT_MAX_BAD_STEPS))
        self.loss_log = LossLog()
        super().__init__(opt)
        self.mac_counter = MACCounter(self.get_bare_model(self.net_g))

    # ----------------------------------------------------------------- networks
    def model_to_device(self, net):
        """Also compiles the student in place when training compiles (``train.compile``, see :mod:`compiling`)."""
        if not hasattr(self, 'network_compiler'):
            self.network_compiler = NetworkCompiler(self.opt, self.device)
        self.network_compiler.prepare(net, f'student {type(net).__name__} (network_g)', 'train')
        return wrap_model(net, self.opt, self.device)

    @property
    def device(self):
        return self._device

    @device.setter
    def device(self, device):
        """BasicSR sets ``cuda``; the plugin keeps the index of the current device, so that comparing devices
        and making tensors on them means one GPU."""
        device = torch.device(device)
        if device.type == 'cuda' and device.index is None and torch.cuda.is_available():
            device = torch.device('cuda', torch.cuda.current_device())
        self._device = device

    def feed_data(self, data):
        """The batch onto the device without waiting for the copy (pinned by the loader on CUDA runs)."""
        self.lq = data['lq'].to(self.device, non_blocking=True)
        if 'gt' in data:
            self.gt = data['gt'].to(self.device, non_blocking=True)

    def load_network(self, net, load_path, strict=True, param_key='params'):
        """``weights_only`` loading; stage-aware and always strict for CADyQ archs (see the module doc); an int8
        deployment checkpoint (``basicsr export``) into a network built with ``backend: int8``."""
        net = self.get_bare_model(net)
        checkpoint = load_checkpoint(load_path)
        logger = get_root_logger()
        if isinstance(checkpoint, dict) and INT8_KEY in checkpoint:  # `basicsr export`'s deployment checkpoint
            load_int8_state_dict(net, checkpoint[INT8_KEY], load_path)
            logger.info(f'Loaded {type(net).__name__} from the int8 checkpoint {load_path}')
            return
        if isinstance(net, CADyQNet):
            state_dict = extract_state_dict(checkpoint, load_path, keys=(param_key, 'params'))
            initial = load_stage_weights(net, state_dict, f'checkpoint {load_path!r}')
            logger.info(f'Loaded {type(net).__name__} from {load_path} [{param_key}]' +
                        (f'; {len(initial)} quantizer entries start from their initial values' if initial else '') +
                        ('' if strict else ' (strict_load false does not apply to CADyQ archs)'))
            return
        state_dict = extract_state_dict(checkpoint, load_path, keys=(param_key, 'params') if param_key else ())
        logger.info(f'Loading {type(net).__name__} model from {load_path}, with param key: [{param_key}].')
        self._print_different_keys_loading(net, state_dict, strict)
        try:
            net.load_state_dict(state_dict, strict=strict)
        except RuntimeError as err:
            raise CheckpointError(f'checkpoint {load_path!r} does not fit {type(net).__name__}: {err}') from err

    @master_only
    def save_network(self, net, net_label, current_iter, param_key='params'):
        """Atomic, retried save of one or more networks (weights on the CPU, PyTorch's ``_metadata`` kept)."""
        label = 'latest' if current_iter == -1 else current_iter
        save_path = osp.join(self.opt['path']['models'], f'{net_label}_{label}.pth')
        nets = net if isinstance(net, list) else [net]
        param_keys = param_key if isinstance(param_key, list) else [param_key]
        if len(nets) != len(param_keys):
            raise ValueError(f'save_network got {len(nets)} networks but {len(param_keys)} param keys')
        save_dict = {}
        for net_, key in zip(nets, param_keys):
            state_dict = self.get_bare_model(net_).state_dict()
            for name in list(state_dict):
                state_dict[name] = state_dict[name].cpu()
            save_dict[key] = state_dict
        save_with_retry(save_dict, save_path, 'network')

    def save_training_state(self, epoch, current_iter):
        """Optimizers, schedulers, every rank's generator states and :meth:`training_state_extras`, atomically.
        A collective in distributed runs (call it on every rank): only rank 0 writes."""
        if current_iter == -1:
            return
        rng_states = gather_rng_states()
        if get_dist_info()[0] != 0:
            return
        state = {'epoch': epoch, 'iter': current_iter, 'optimizers': [o.state_dict() for o in self.optimizers],
                 'schedulers': [s.state_dict() for s in self.schedulers],
                 STATE_KEY: {'rng': rng_states[0], 'rng_per_rank': rng_states, **self.training_state_extras()}}
        save_with_retry(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'),
                        'training state')

    def training_state_extras(self):
        """What this model adds to a training state (plain values and tensors): the count of bad steps and the
        open window of logged losses."""
        return {'bad_steps': self.step_guard.bad_steps, 'loss_log': self.loss_log.state_dict()}

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        for optimizer in self.optimizers:
            keep_implementation(optimizer)
        self.load_training_state_extras(resume_state.get(STATE_KEY) or {})

    def load_training_state_extras(self, extras):
        """Inverse of :meth:`training_state_extras` (a state saved by BasicSR itself has none)."""
        self.step_guard.bad_steps = int(extras.get('bad_steps', 0))
        if 'loss_log' in extras:
            self.loss_log.load_state_dict(extras['loss_log'], self.device)

    def save(self, epoch, current_iter):
        """BasicSR's save, after the step guard's check: nothing is saved once the run has diverged."""
        self.check_steps(current_iter)
        super().save(epoch, current_iter)

    def get_current_log(self):
        """The losses averaged over the iterations since the previous call and over the ranks (a host read: called
        at ``print_freq`` iterations)."""
        return self.loss_log.reduce()

    # ----------------------------------------------------------------- training
    def parameter_groups(self):
        """Split the student's parameters into weights, PAMS ranges (alphas) and selector parameters."""
        net = self.get_bare_model(self.net_g)
        alphas, selectors = [], []
        for module in net.modules():
            if isinstance(module, PAMSQuant):
                alphas.append(module.alpha)
            elif isinstance(module, BitSelector):
                selectors += list(module.fc.parameters())
        special = {id(p) for p in alphas + selectors}
        weights = [p for p in net.parameters() if id(p) not in special and p.requires_grad]
        return weights, alphas, selectors

    def setup_optimizers(self):
        train_opt = self.opt['train']
        weights, alphas, selectors = self.parameter_groups()
        optim_g = dict(train_opt['optim_g'])
        optim_type = optim_g.pop('type')
        groups = [{'params': weights, **optim_g}]
        if alphas:
            groups.append({'params': alphas, **{k: v for k, v in (train_opt.get('optim_alpha') or {}).items()
                                                if k != 'type'}})
        self.optimizer_g = make_optimizer(optim_type, groups, self.device)
        self.optimizers.append(self.optimizer_g)
        self.optimizer_s = None
        if selectors:
            optim_s = dict(train_opt.get('optim_selector') or train_opt['optim_g'])
            self.optimizer_s = make_optimizer(optim_s.pop('type'), [{'params': selectors, **optim_s}], self.device)
            self.optimizers.append(self.optimizer_s)
        if self.device.type != 'cpu' and not all(skips_on_device(o) for o in self.optimizers):
            get_root_logger().info('The optimizers cannot skip a non-finite step on the device (only fused Adam, '
                                   'AdamW and SGD can): the CPU reads the step guard\'s flag every iteration')

    @compiled_training_step
    def optimize_parameters(self, current_iter):
        """One training step (see the module doc): losses of :meth:`compute_losses`, the step guard, EMA."""
        net = self.get_bare_model(self.net_g)
        if isinstance(net, CADyQNet):
            set_calibration(net, current_iter <= net.calib_iters)
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.step_guard.snapshot(net)
        if isinstance(net, CADyQNet):
            self.output, aux = self.net_g(self.lq, return_aux=True)
        else:
            self.output, aux = self.net_g(self.lq), None
        loss_dict = OrderedDict()
        l_total = self.compute_losses(aux, current_iter, loss_dict)
        l_total.backward()  # also on a bad step: in DDP every rank must run backward
        if aux is not None and aux['bits'].shape[1]:
            loss_dict['avg_bit'] = aux['bits'].detach().mean()
        self.log_dict = OrderedDict((k, v.detach()) for k, v in loss_dict.items())  # this step, this rank
        ok = self.step_guard.decide([l_total.detach()], self.optimizers)
        ema = self._ema_snapshot() if self.ema_decay > 0 else None
        self.step_guard.step(self.optimizers, ok)
        if ema is not None:
            self.model_ema(decay=self.ema_decay)
            with torch.no_grad():  # a skipped step leaves the average alone too
                torch._foreach_copy_(list(ema), [torch.where(ok, p, saved) for p, saved in ema.items()])
        self.step_guard.record(ok, current_iter, self.log_dict)
        self.loss_log.add(self.log_dict, ok)
        if self.device.type == 'cpu' or self._is_print_iteration(current_iter):
            self.check_steps(current_iter)

    def check_steps(self, current_iter):
        """The step guard's host-side check (warnings, the stop); see :mod:`step_guard`."""
        self.step_guard.check(current_iter, get_root_logger(), self.optimizers, checkpoint_dirs(self))

    def _is_print_iteration(self, current_iter):
        """``logger.print_freq`` divides ``current_iter`` (never for a model built without a logger section, as
        the benchmark's: it is checked before saves only)."""
        print_freq = (self.opt.get('logger') or {}).get('print_freq')
        return bool(print_freq) and current_iter % int(print_freq) == 0

    def _ema_snapshot(self):
        return {p: p.detach().clone() for p in self.net_g_ema.parameters()}

    def compute_losses(self, aux, current_iter, loss_dict):
        """SRModel's pixel and perceptual losses of ``self.output``; returns their sum, entries in ``loss_dict``."""
        l_total = 0
        if self.cri_pix:
            loss_dict['l_pix'] = self.cri_pix(self.output, self.gt)
            l_total = l_total + loss_dict['l_pix']
        if self.cri_perceptual:
            l_percep, l_style = self.cri_perceptual(self.output, self.gt)
            for name, value in (('l_percep', l_percep), ('l_style', l_style)):
                if value is not None:
                    loss_dict[name] = value
                    l_total = l_total + value
        return l_total

    # ----------------------------------------------------------------- inference
    def test(self):
        """Inference of ``self.lq`` (one image, image-wise or ``val.patchwise``) on ``net_g_ema`` when there is
        one, else the bare ``net_g``: sets ``self.output``, ``self.forwards`` (per forward pass: MAC table and
        chosen bits) and ``self.regions`` (the HR box each forward pass fills)."""
        net = getattr(self, 'net_g_ema', None)
        if net is None:
            net = self.get_bare_model(self.net_g)
        self.network_compiler.prepare(net, f'{type(net).__name__} (inference)', 'val')
        was_training = net.training
        net.eval()
        patchwise = (self.opt.get('val') or {}).get('patchwise')
        with self.network_compiler.running('val', 'the first inference'):
            self.output, self.forwards, self.regions = super_resolve(net, self.lq, patchwise, self.mac_counter)
        net.train(was_training)

    def static_bits(self):
        """FAB of a pams network (every selector place at ``a_bits``); None otherwise."""
        net = self.get_bare_model(self.net_g)
        return net.quant.a_bits if getattr(net, 'quant_mode', None) == 'pams' else None

    def validation(self, dataloader, current_iter, tb_logger, save_img=False):
        """BasicSR's validation, leaving the global generators as it found them (validating or not never changes
        what training draws next)."""
        with preserved_rng_state():
            super().validation(dataloader, current_iter, tb_logger, save_img)

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        dataset_name = dataloader.dataset.opt['name']
        self.finish_validation(dataset_name, self.evaluate_images(dataloader, dataset_name, current_iter, save_img),
                               current_iter, tb_logger)

    def dist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """Each rank evaluates its share of the images on the bare network; rank 0 finishes on all rows."""
        dist_validation(self, dataloader, current_iter, tb_logger, save_img)

    def evaluate_images(self, samples, dataset_name, current_iter, save_img):
        """Inference and metrics of every sample; one row (``name``, each metric, ``bits``) per image.

        ``samples`` is any iterable of BasicSR validation batches of one image (a dataloader, or one rank's
        share of it in distributed validation).
        """
        metrics_opt = self.opt['val'].get('metrics') or {}
        use_pbar = self.opt['val'].get('pbar', False)
        pbar = tqdm(total=len(samples), unit='image') if use_pbar and hasattr(samples, '__len__') else None
        bit_range = self._bit_range()
        rows = []
        for val_data in samples:
            img_name = osp.splitext(osp.basename(val_data['lq_path'][0]))[0]
            self.feed_data(val_data)
            self.test()
            sr_img = tensor2img([self.output.detach().cpu()])
            gt_img = tensor2img([self.gt.detach().cpu()]) if hasattr(self, 'gt') else None
            if hasattr(self, 'gt'):
                del self.gt
            del self.lq, self.output
            metric_data = {'img': sr_img, 'forwards': self.forwards, 'static_bits': self.static_bits()}
            if gt_img is not None:
                metric_data['img2'] = gt_img
            row = {'name': img_name, 'bits': torch.stack([f['bits'] for f in self.forwards])}
            row.update((name, float(calculate_metric(metric_data, opt_))) for name, opt_ in metrics_opt.items())
            fabs = [float(f['bits'].float().mean()) for f in self.forwards] if row['bits'].numel() else None
            if save_img:
                sr_path = visualization_path(self.opt, dataset_name, img_name, current_iter)
                imwrite(sr_img, sr_path)
                if fabs:
                    save_bit_map(sr_path, sr_img, self.regions, fabs, bit_range=bit_range)
            if fabs and len(rows) < self._tb_bit_maps():
                row['bit_map'] = render_bit_map(sr_img, self.regions, fabs, bit_range=bit_range)
            rows.append(row)
            if pbar:
                pbar.update(1)
                pbar.set_description(f'Test {img_name}')
        if pbar:
            pbar.close()
        return rows

    def finish_validation(self, dataset_name, rows, current_iter, tb_logger):
        """Average the per-image rows, update best-metric records and log (rank 0 only in distributed runs);
        TensorBoard bit visuals in training, results tables in tests."""
        if not average_rows(self, dataset_name, rows, current_iter, tb_logger):
            return
        self._log_bit_visuals(dataset_name, rows, current_iter, tb_logger)
        if not self.opt['is_train']:
            metric_names, target = self.results_columns()
            csv_path, _ = write_results_table(rows, self.opt['path']['results_root'], dataset_name, metric_names,
                                              target=target)
            get_root_logger().info(f'Results table of {dataset_name}: {csv_path} (and .md)')

    def results_columns(self):
        """The metric columns of the results tables and their ``target`` row (None: none; see CADyQModel)."""
        return list(self.opt['val']['metrics']), None

    def _bit_range(self):
        quant = getattr(self.get_bare_model(self.net_g), 'quant', None)
        return (min(quant.bits), max(quant.bits)) if quant is not None else None

    def _tb_bit_maps(self):
        """How many validation images get a bit map in TensorBoard (training only; ``val.tb_bit_maps``)."""
        if not self.opt['is_train'] or not (self.opt.get('logger') or {}).get('use_tb_logger'):
            return 0
        return int(self.opt['val'].get('tb_bit_maps', 2))

    def _log_bit_visuals(self, dataset_name, rows, current_iter, tb_logger):
        """TensorBoard: bit maps of the first images and a histogram of the chosen bits of every layer."""
        if tb_logger is None or not rows or not rows[0]['bits'].numel():
            return
        for row in rows:
            if 'bit_map' in row:
                log_bit_map(tb_logger, f'bit_maps/{dataset_name}/{row["name"]}', row['bit_map'], current_iter)
        log_bit_histograms(tb_logger, f'bits/{dataset_name}', torch.cat([row['bits'] for row in rows]),
                           current_iter)


def keep_implementation(optimizer):
    """After loading a state saved by another run (on another device, or before optimizers ran fused on CUDA): the
    implementation chosen for this run (``fused`` / ``foreach`` / ``capturable``; a loaded state brings the saved
    run's) and the step counts where it keeps them (on the parameters' device when fused or capturable)."""
    on_device = bool(optimizer.defaults.get('fused') or optimizer.defaults.get('capturable'))
    for group in optimizer.param_groups:
        group.update({key: optimizer.defaults[key] for key in ('fused', 'foreach', 'capturable')
                      if key in optimizer.defaults})
        for param in group['params']:
            step = optimizer.state.get(param, {}).get('step')
            if torch.is_tensor(step):
                optimizer.state[param]['step'] = step.to(param.device if on_device else 'cpu', torch.float32)


FUSED_OPTIMIZERS = ('Adam', 'AdamW', 'SGD')  # torch.optim classes with a fused CPU and CUDA step that honours found_inf


def make_optimizer(optim_type, groups, device=None):
    """A ``torch.optim`` optimizer by class name over parameter ``groups``. Adam, AdamW and SGD run fused on the CPU
    and CUDA (one operation per step instead of several per parameter: CADyQ networks have hundreds of small
    parameters, every quantizer's range; on CUDA the fused step also skips a non-finite step without a host sync,
    see :mod:`step_guard`), other classes multi-tensor (``foreach``). The fused update is the same formula; it may
    round differently in the last bit. Options that choose an implementation (``fused`` / ``foreach``) keep it."""
    optim_cls = getattr(torch.optim, optim_type, None)
    if optim_cls is None or not isinstance(optim_cls, type):
        raise ValueError(f'unknown optimizer type {optim_type!r}; use a torch.optim class name such as Adam')
    if any(key in group for group in groups for key in ('fused', 'foreach')):
        return optim_cls(groups)
    device_type = 'cpu' if device is None else torch.device(device).type
    if optim_type in FUSED_OPTIMIZERS and device_type in ('cpu', 'cuda'):
        return optim_cls(groups, fused=True)
    if 'foreach' in inspect.signature(optim_cls).parameters:
        return optim_cls(groups, foreach=True)
    return optim_cls(groups)
