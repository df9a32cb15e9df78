"""CADyQSRModel: BasicSR's SRModel made crash-safe, CPU-capable and bit-aware; stage 1 and the base of CADyQModel.

Everything here concerns any SR network, quantized or not; :class:`~cadyq_plugin.models.CADyQModel` adds only
the teacher, the distillation and the bit loss. Beyond ``SRModel``:

- **Devices**: DDP on the CPU (gloo, no ``device_ids``) with the calibration ranges kept in sync across ranks
  (:func:`cadyq_plugin.distributed.wrap_model`).
- **Loading**: checkpoints are read with ``weights_only=True``; CADyQ archs load stage-aware and strictly
  (:mod:`stage_loading`: only quantizer/selector entries of an earlier stage may be missing, ``strict_load_g:
  false`` cannot load another backbone, mode or scale silently); other archs keep BasicSR's ``strict`` flag.
- **Saving**: networks and training states are written atomically, with the permissions of the user's umask,
  three tries then a :class:`~cadyq_plugin.checkpoint.CheckpointError`; a training state also holds every
  rank's generator states and the step guard's count of bad steps (plain tensors and numbers).
- **Steps**: PAMS calibration during the first ``network_g.calib_iters`` iterations; a step whose loss or
  gradients are not finite is skipped and undone, ``train.max_bad_steps`` in a row stop the run
  (:mod:`step_guard`); parameter groups for weights (``optim_g``), PAMS ranges (``optim_alpha``) and selectors
  (``optim_selector``, a separate optimizer); ``avg_bit`` of the training batches is logged.
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
from cadyq_plugin.models.stage_loading import load_stage_weights
from cadyq_plugin.models.step_guard import DEFAULT_MAX_BAD_STEPS, StepGuard, checkpoint_dirs
from cadyq_plugin.models.validation import average_rows, dist_validation, visualization_path
from cadyq_plugin.quant import BitSelector, PAMSQuant, set_calibration
from cadyq_plugin.reporting import (log_bit_histograms, log_bit_map, render_bit_map, save_bit_map,
                                    write_results_table)
from cadyq_plugin.resume import STATE_KEY, gather_rng_states, preserved_rng_state


@MODEL_REGISTRY.register()
class CADyQSRModel(SRModel):
    """SRModel for any SR arch with the behaviour listed in the module doc (``model_type: CADyQSRModel``).

    Options beyond SRModel's: ``train.optim_alpha`` (PAMS ranges: a second param group of the weight optimizer),
    ``train.optim_selector`` (bit selectors: a separate optimizer), ``train.max_bad_steps``, ``val.patchwise``
    (``{patch, step, batch}``) and ``val.tb_bit_maps`` (bit maps of the first N validation images in TensorBoard).
    """

    def __init__(self, opt):
        self.step_guard = StepGuard((opt.get('train') or {}).get('max_bad_steps', DEFAULT_MAX_BAD_STEPS))
        super().__init__(opt)
        self.mac_counter = MACCounter(self.get_bare_model(self.net_g))

    # ----------------------------------------------------------------- networks
    def model_to_device(self, net):
        """Also compiles the student in place when training compiles (``train.compile``, see :mod:`compiling`)."""
        if not hasattr(self, 'network_compiler'):
            self.network_compiler = NetworkCompiler(self.opt, self.device)
        self.network_compiler.prepare(net, f'student {type(net).__name__} (network_g)', 'train')
        return wrap_model(net, self.opt, self.device)

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
        """What this model adds to a training state (plain values and tensors): the count of bad steps."""
        return {'bad_steps': self.step_guard.bad_steps}

    def resume_training(self, resume_state):
        super().resume_training(resume_state)
        self.load_training_state_extras(resume_state.get(STATE_KEY) or {})

    def load_training_state_extras(self, extras):
        """Inverse of :meth:`training_state_extras` (a state saved by BasicSR itself has none)."""
        self.step_guard.bad_steps = int(extras.get('bad_steps', 0))

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
        self.optimizer_g = make_optimizer(optim_type, groups)
        self.optimizers.append(self.optimizer_g)
        self.optimizer_s = None
        if selectors:
            optim_s = dict(train_opt.get('optim_selector') or train_opt['optim_g'])
            self.optimizer_s = make_optimizer(optim_s.pop('type'), [{'params': selectors, **optim_s}])
            self.optimizers.append(self.optimizer_s)

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
        self.log_dict = self.reduce_loss_dict(OrderedDict((k, v.detach()) for k, v in loss_dict.items()))
        if self.step_guard.finite([l_total.detach()], self.optimizers):
            for optimizer in self.optimizers:
                optimizer.step()
            self.step_guard.good_step()
            if self.ema_decay > 0:
                self.model_ema(decay=self.ema_decay)
        else:
            self.step_guard.bad_step(self.optimizers, current_iter, self.log_dict, get_root_logger(),
                                     checkpoint_dirs(self))

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


def make_optimizer(optim_type, groups):
    """A ``torch.optim`` optimizer by class name over parameter ``groups``. One that has a fused implementation
    (Adam, AdamW, SGD, ...) uses it on every device, else the multi-tensor (``foreach``) one: one or a few
    operations per parameter group instead of several per parameter (CADyQ networks have hundreds of small
    parameters: every quantizer's range). The fused update is the same formula; it may round differently in the
    last bit. A group that sets ``fused`` or ``foreach`` itself keeps its choice."""
    optim_cls = getattr(torch.optim, optim_type, None)
    if optim_cls is None or not isinstance(optim_cls, type):
        raise ValueError(f'unknown optimizer type {optim_type!r}; use a torch.optim class name such as Adam')
    if any('fused' in group or 'foreach' in group for group in groups):
        return optim_cls(groups)
    accepted = inspect.signature(optim_cls).parameters
    for implementation in ('fused', 'foreach'):
        if implementation in accepted:
            return optim_cls(groups, **{implementation: True})
    return optim_cls(groups)
