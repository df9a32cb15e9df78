"""CADyQModel: BasicSR's SRModel with a frozen teacher, distillation, bit loss and BitOPs/FAB validation."""
from collections import OrderedDict
from os import path as osp

import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.metrics import calculate_metric
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, imwrite, tensor2img
from basicsr.utils.registry import MODEL_REGISTRY
from tqdm import tqdm

from cadyq_plugin.checkpoint import extract_state_dict, load_checkpoint
from cadyq_plugin.inference import super_resolve
from cadyq_plugin.metrics import MACCounter
from cadyq_plugin.models.stage_loading import load_stage_weights
from cadyq_plugin.models.step_guard import checkpoint_dirs, get_step_guard
from cadyq_plugin.models.validation import average_rows, visualization_path
from cadyq_plugin.reporting import (log_bit_histograms, log_bit_map, render_bit_map, save_bit_map,
                                    write_results_table)
from cadyq_plugin.quant import BitSelector, PAMSQuant, set_calibration


@MODEL_REGISTRY.register()
class CADyQModel(SRModel):
    """Stages 2 (PAMS W8A8, FP teacher, no bit loss) and 3 (CADyQ, PAMS teacher, bit loss) of SPEC §4.

    Options beyond SRModel's: ``network_t`` + ``path.pretrain_network_t`` (frozen teacher, always in eval
    mode), ``train.kd_opt`` (ATLoss), ``train.bit_opt`` (BitLoss), ``train.optim_alpha`` (PAMS ranges, a
    second param group of the weight optimizer) and ``train.optim_selector`` (a separate optimizer).
    """

    def __init__(self, opt):
        super().__init__(opt)
        bare = self.get_bare_model(self.net_g)
        self.mac_counter = MACCounter(bare)
        self.net_t = None
        if opt.get('network_t') is not None:
            self.net_t = self._build_teacher(opt)

    # ----------------------------------------------------------------- networks
    def load_network(self, net, load_path, strict=True, param_key='params'):
        """Stage-aware strict loading (see :mod:`stage_loading`); ``weights_only`` always."""
        net = self.get_bare_model(net)
        state_dict = extract_state_dict(load_checkpoint(load_path), load_path, keys=(param_key, 'params'))
        initial = load_stage_weights(net, state_dict, f'checkpoint {load_path!r}')
        logger = get_root_logger()
        logger.info(f'Loaded {type(net).__name__} from {load_path} [{param_key}]'
                    + (f'; {len(initial)} quantizer entries start from their initial values' if initial else ''))

    def _build_teacher(self, opt):
        student_opt, teacher_opt = opt['network_g'], opt['network_t']
        for key in ('type', 'upscale'):
            if student_opt.get(key) != teacher_opt.get(key):
                raise ValueError(f'network_t.{key} is {teacher_opt.get(key)!r} but network_g.{key} is '
                                 f'{student_opt.get(key)!r}: the teacher must be the same backbone and scale')
        load_path = opt['path'].get('pretrain_network_t')
        if load_path is None:
            raise ValueError('network_t is set but path.pretrain_network_t is missing: the teacher needs weights')
        net_t = build_network(teacher_opt).to(self.device)
        self.load_network(net_t, load_path, True, opt['path'].get('param_key_t', 'params'))
        net_t.eval()
        for param in net_t.parameters():
            param.requires_grad_(False)
        return net_t

    # ----------------------------------------------------------------- training
    def init_training_settings(self):
        train_opt = self.opt['train']
        self.cri_kd = build_loss(train_opt['kd_opt']).to(self.device) if train_opt.get('kd_opt') else None
        self.cri_bit = build_loss(train_opt['bit_opt']).to(self.device) if train_opt.get('bit_opt') else None
        super().init_training_settings()

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
            groups.append({'params': alphas, **{k: v for k, v in train_opt.get('optim_alpha', {}).items()
                                                if k != 'type'}})
        self.optimizer_g = _make_optimizer(optim_type, groups)
        self.optimizers.append(self.optimizer_g)
        self.optimizer_s = None
        if selectors:
            optim_s = dict(train_opt.get('optim_selector') or train_opt['optim_g'])
            self.optimizer_s = _make_optimizer(optim_s.pop('type'), [{'params': selectors, **optim_s}])
            self.optimizers.append(self.optimizer_s)

    def optimize_parameters(self, current_iter):
        """One training step; a step whose loss or gradients are not finite is skipped (no optimizer step,
        gradients cleared, calibration ranges restored) and ``train.max_bad_steps`` (default 10) such steps in a
        row stop training (:mod:`step_guard`)."""
        net = self.get_bare_model(self.net_g)
        guard = get_step_guard(self)
        set_calibration(net, current_iter <= net.calib_iters)
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        guard.snapshot(net)
        self.output, aux = self.net_g(self.lq, return_aux=True)

        loss_dict = OrderedDict()
        l_total = 0
        if self.cri_pix:
            loss_dict['l_pix'] = self.cri_pix(self.output, self.gt)
            l_total = l_total + loss_dict['l_pix']
        if self.cri_kd and self.net_t is not None:
            with torch.no_grad():
                _, aux_t = self.net_t(self.lq, return_aux=True)
            loss_dict['l_kd'] = self.cri_kd(aux['body'], aux_t['body'], aux['feats'], aux_t['feats'])
            l_total = l_total + loss_dict['l_kd']
        if self.cri_bit and aux['bits'].shape[1]:
            loss_dict['l_bit'] = self.cri_bit(aux['weighted_bits'], current_iter)
            l_total = l_total + loss_dict['l_bit']
        l_total.backward()  # also on a bad step: in DDP every rank must run backward
        if aux['bits'].shape[1]:
            loss_dict['avg_bit'] = aux['bits'].detach().mean()
        self.log_dict = self.reduce_loss_dict({k: v.detach() for k, v in loss_dict.items()})
        if guard.finite([l_total.detach()], self.optimizers):
            for optimizer in self.optimizers:
                optimizer.step()
            guard.good_step()
        else:
            guard.bad_step(self.optimizers, current_iter, self.log_dict, get_root_logger(), checkpoint_dirs(self))

    # ----------------------------------------------------------------- inference
    def test(self):
        """Inference of ``self.lq`` (one image, image-wise or ``val.patchwise``): sets ``self.output``,
        ``self.forwards`` (one entry per forward pass: its MAC table and chosen bits) and ``self.regions`` (the HR
        box each forward pass contributes)."""
        net = self.get_bare_model(self.net_g)
        was_training = net.training
        net.eval()
        patchwise = self.opt['val'].get('patchwise') if self.opt.get('val') else None
        self.output, self.forwards, self.regions = super_resolve(net, self.lq, patchwise, self.mac_counter)
        net.train(was_training)

    def static_bits(self):
        """FAB of a pams network (every selector place at ``a_bits``); None otherwise."""
        net = self.get_bare_model(self.net_g)
        return net.quant.a_bits if getattr(net, 'quant_mode', None) == 'pams' else None

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        dataset_name = dataloader.dataset.opt['name']
        rows = self.evaluate_images(dataloader, dataset_name, current_iter, save_img)
        self.finish_validation(dataset_name, rows, current_iter, tb_logger)

    def dist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """Each rank evaluates its share of the images on the bare network; rank 0 finishes on all rows."""
        from cadyq_plugin.distributed import dist_validation
        dist_validation(self, dataloader, current_iter, tb_logger, save_img)

    def evaluate_images(self, samples, dataset_name, current_iter, save_img):
        """Run inference and the metrics on every sample; one row (``name`` + each metric) per image.

        ``samples`` is any iterable of BasicSR validation batches of one image (a dataloader, or one rank's
        share of it in distributed validation).
        """
        metrics_opt = self.opt['val'].get('metrics') or {}
        use_pbar = self.opt['val'].get('pbar', False)
        pbar = tqdm(total=len(samples), unit='image') if use_pbar and hasattr(samples, '__len__') else None
        rows = []
        for val_data in samples:
            img_name = osp.splitext(osp.basename(val_data['lq_path'][0]))[0]
            self.feed_data(val_data)
            self.test()
            sr_img = tensor2img([self.output.detach().cpu()])
            metric_data = {'img': sr_img, 'forwards': self.forwards, 'static_bits': self.static_bits()}
            if hasattr(self, 'gt'):
                metric_data['img2'] = tensor2img([self.gt.detach().cpu()])
                del self.gt
            del self.lq, self.output
            row = {'name': img_name}
            row.update({name: float(calculate_metric(metric_data, opt_)) for name, opt_ in metrics_opt.items()})
            row['bits'] = torch.stack([f['bits'] for f in self.forwards])
            if save_img:
                sr_path = visualization_path(self.opt, dataset_name, img_name, current_iter)
                imwrite(sr_img, sr_path)
                if row['bits'].numel():
                    save_bit_map(sr_path, sr_img, self.regions, self._fabs(), bit_range=self._bit_range())
            if row['bits'].numel() and len(rows) < self._tb_bit_maps():
                row['bit_map'] = render_bit_map(sr_img, self.regions, self._fabs(), bit_range=self._bit_range())
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
            metric_names = list(self.opt['val']['metrics'])
            csv_path, _ = write_results_table(rows, self.opt['path']['results_root'], dataset_name, metric_names)
            get_root_logger().info(f'Results table of {dataset_name}: {csv_path} (and .md)')

    def _fabs(self):
        """FAB of each forward pass of the current image (patch or whole image)."""
        return [float(f['bits'].float().mean()) for f in self.forwards]

    def _bit_range(self):
        bits = self.get_bare_model(self.net_g).quant.bits
        return (min(bits), max(bits))

    def _tb_bit_maps(self):
        """How many validation images get a bit map in TensorBoard (training only; ``val.tb_bit_maps``)."""
        if not self.opt['is_train'] or not self.opt.get('logger', {}).get('use_tb_logger'):
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

def _make_optimizer(optim_type, groups):
    optim_cls = getattr(torch.optim, optim_type, None)
    if optim_cls is None or not isinstance(optim_cls, type):
        raise ValueError(f'unknown optimizer type {optim_type!r}; use a torch.optim class name such as Adam')
    return optim_cls(groups)
