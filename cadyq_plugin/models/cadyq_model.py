"""CADyQModel: stages 2 and 3 of SPEC §4, CADyQSRModel plus a frozen teacher, distillation and the bit loss."""
import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.utils.registry import MODEL_REGISTRY

from cadyq_plugin.models.sr_model import CADyQSRModel


@MODEL_REGISTRY.register()
class CADyQModel(CADyQSRModel):
    """Stage 2 (PAMS W8A8, FP teacher, no bit loss) and stage 3 (CADyQ, PAMS teacher, bit loss).

    Options beyond CADyQSRModel's: ``network_t`` + ``path.pretrain_network_t`` (the frozen teacher, always in
    eval mode, never wrapped in DDP, never saved), ``train.kd_opt`` (ATLoss on the body output and the block
    features) and ``train.bit_opt`` (BitLoss on the per-sample weighted bits).
    """

    def __init__(self, opt):
        super().__init__(opt)
        self.net_t = self._build_teacher(opt) if opt.get('network_t') is not None else None

    def _build_teacher(self, opt):
        from cadyq_plugin.config_check import teacher_mismatches
        problems = teacher_mismatches(opt['network_g'], opt['network_t'])
        if problems:
            raise ValueError('the teacher does not fit the student: ' + '; '.join(problems))
        load_path = opt['path'].get('pretrain_network_t')
        if load_path is None:
            raise ValueError('network_t is set but path.pretrain_network_t is missing: the teacher needs weights')
        net_t = build_network(opt['network_t']).to(self.device)
        self.load_network(net_t, load_path, True, opt['path'].get('param_key_t', 'params'))
        net_t.eval()
        for param in net_t.parameters():
            param.requires_grad_(False)
        return net_t

    def init_training_settings(self):
        train_opt = self.opt['train']
        self.cri_kd = build_loss(train_opt['kd_opt']).to(self.device) if train_opt.get('kd_opt') else None
        self.cri_bit = build_loss(train_opt['bit_opt']).to(self.device) if train_opt.get('bit_opt') else None
        super().init_training_settings()

    def compute_losses(self, aux, current_iter, loss_dict):
        """Pixel loss + ``l_kd`` (attention transfer from the teacher) + ``l_bit`` (bit loss, cadyq mode)."""
        l_total = super().compute_losses(aux, current_iter, loss_dict)
        if self.cri_kd and self.net_t is not None:
            with torch.no_grad():
                _, aux_t = self.net_t(self.lq, return_aux=True)
            loss_dict['l_kd'] = self.cri_kd(aux['body'], aux_t['body'], aux['feats'], aux_t['feats'])
            l_total = l_total + loss_dict['l_kd']
        if self.cri_bit and aux['bits'].shape[1]:
            loss_dict['l_bit'] = self.cri_bit(aux['weighted_bits'], current_iter)
            l_total = l_total + loss_dict['l_bit']
        return l_total
