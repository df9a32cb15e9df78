"""CADyQModel: training stages 2 and 3 (``docs/method.md#training``), CADyQSRModel plus a frozen teacher,
distillation and the bit loss."""
import torch
from basicsr.archs import build_network
from basicsr.losses import build_loss
from basicsr.utils import get_root_logger
from basicsr.utils.registry import MODEL_REGISTRY
from mmengine.dist import all_reduce

from cadyq_plugin.budget.report import BudgetReport
from cadyq_plugin.budget.target import BitBudget, budget_spec
from cadyq_plugin.models.sr_model import CADyQSRModel
from cadyq_plugin.quant import BitSelector

# The option keys read here beyond CADyQSRModel, by section ('' is the top level; the options check accepts them)
OPTION_KEYS = {'': ('network_t',), 'train': ('kd_opt', 'bit_opt'), 'val': ('target_fab', 'target_bitops')}


@MODEL_REGISTRY.register()
class CADyQModel(CADyQSRModel):
    """Stage 2 (PAMS W8A8, FP teacher, no bit loss) and stage 3 (CADyQ, PAMS teacher, bit loss).

    Options beyond CADyQSRModel's: ``network_t`` + ``path.pretrain_network_t`` (the frozen teacher, always in
    eval mode, never wrapped in DDP, never saved), ``train.kd_opt`` (ATLoss on the body output and the block
    features) and ``train.bit_opt`` (BitLoss on the per-sample weighted bits). A bit budget (``train.bit_opt.
    target_fab`` / ``target_bitops``) replaces the bit loss and is held here: every iteration the global batch's mean
    bit (averaged over ranks) updates the budget's price (:mod:`cadyq_plugin.budget.controller`), which is applied
    to the selectors' biases after the step and whose state goes into the training state; validation and the
    results tables report the budget (``val.target_fab`` / ``val.target_bitops`` in a test options file).
    """

    def __init__(self, opt):
        super().__init__(opt)
        self.net_t = self._build_teacher(opt) if opt.get('network_t') is not None else None
        spec = budget_spec(opt)
        self.bit_budget = BitBudget.of_network(*spec, self.get_bare_model(self.net_g)) if spec else None
        self.budget_report = BudgetReport(self.bit_budget, (opt.get('val') or {}).get('metrics')) if spec else None
        if spec and opt['is_train']:
            self.prepare_price()
            get_root_logger().info(
                f'Bit budget: {self.bit_budget.name} {self.bit_budget.target:g} (mean bit '
                f'{self.bit_budget.target_bit:.4f}), held by a price on the selectors\' logits; no bit loss')

    def _build_teacher(self, opt):
        from cadyq_plugin.archs.network_options import teacher_mismatches
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
        return self.network_compiler.prepare(net_t, f'teacher {type(net_t).__name__} (network_t)', 'train')

    def init_training_settings(self):
        train_opt = self.opt['train']
        self.cri_kd = build_loss(train_opt['kd_opt']).to(self.device) if train_opt.get('kd_opt') else None
        self.cri_bit = build_loss(train_opt['bit_opt']).to(self.device) if train_opt.get('bit_opt') else None
        self._price_step = None
        super().init_training_settings()

    def prepare_price(self):
        """What the budget's price works on, made on the network's device (again after the network moves): each
        selector's bias (in selector order), ``[n_selectors, n_candidates]`` the cost of each candidate, the target
        in the user's unit and the controller's state."""
        selectors = sorted((m for m in self.get_bare_model(self.net_g).modules() if isinstance(m, BitSelector)),
                           key=lambda m: m.index)
        self._selector_biases = [m.fc.bias for m in selectors]
        self.bit_budget.to(self.device)
        self._candidate_costs = self.bit_budget.candidate_costs(selectors[0].bit_values)
        self._target_value = torch.tensor(self.bit_budget.target, device=self.device)
        controller = self._controller()
        controller.running, controller.price = controller.running.to(self.device), controller.price.to(self.device)

    def compute_losses(self, aux, current_iter, loss_dict):
        """Pixel loss + ``l_kd`` (attention transfer from the teacher) + ``l_bit`` (bit loss, cadyq mode; with a
        bit budget no loss: the budget's price is updated instead, :meth:`_steer_budget`)."""
        l_total = super().compute_losses(aux, current_iter, loss_dict)
        if self.cri_kd and self.net_t is not None:
            with torch.no_grad():
                _, aux_t = self.net_t(self.lq, return_aux=True)
            loss_dict['l_kd'] = self.cri_kd(aux['body'], aux_t['body'], aux['feats'], aux_t['feats'])
            l_total = l_total + loss_dict['l_kd']
        if self.cri_bit and aux['bits'].shape[1]:
            if self.bit_budget is not None:
                self._steer_budget(aux, loss_dict)
            else:
                loss_dict['l_bit'] = self.cri_bit(aux['weighted_bits'], current_iter)
                l_total = l_total + loss_dict['l_bit']
        return l_total

    def optimize_parameters(self, current_iter):
        """The step, then the budget's price change of this iteration applied to the selectors' biases."""
        super().optimize_parameters(current_iter)
        self._apply_price()

    def _apply_price(self):
        """Shift each selector's bias by minus the price change times its candidates' costs (one fused add)."""
        if self._price_step is None:
            return
        with torch.no_grad():
            torch._foreach_sub_(self._selector_biases, list((self._price_step * self._candidate_costs).unbind(0)))
        self._price_step = None

    def _steer_budget(self, aux, loss_dict):
        """Update the price with the global batch's mean bit (on the device: nothing waits for it); log target,
        running value (in the budget's unit) and price."""
        budget, controller = self.bit_budget, self.cri_bit.controller
        measured = budget.mean_bit(aux['bits'].detach())
        all_reduce(measured, op='mean')  # every rank steers by the same global batch
        self._price_step = controller.update(measured - budget.target_bit)
        loss_dict[budget.name] = self._target_value.clone()  # logged copies: a logger may accumulate in place
        loss_dict[f'running_{budget.kind}'] = budget.to_user(controller.running + budget.target_bit)
        loss_dict['bit_price'] = controller.price.clone()

    # ----------------------------------------------------------------- training state
    def training_state_extras(self):
        """Adds the budget controller's state (``bit_budget``) when a budget is steered."""
        extras = super().training_state_extras()
        if self._controller() is not None:
            extras['bit_budget'] = self._controller().state_dict()
        return extras

    def load_training_state_extras(self, extras):
        super().load_training_state_extras(extras)
        if self._controller() is not None and 'bit_budget' in extras:
            self._controller().load_state_dict(extras['bit_budget'], device=self.device)

    def _controller(self):
        cri_bit = getattr(self, 'cri_bit', None)
        return cri_bit.controller if cri_bit is not None else None

    # ----------------------------------------------------------------- validation
    def finish_validation(self, dataset_name, rows, current_iter, tb_logger):
        """CADyQSRModel's, plus the budget: its measure per image (results tables), a log line and TensorBoard."""
        report = self.budget_report if rows and rows[0]['bits'].numel() else None
        if report is not None:
            report.annotate(rows)
        super().finish_validation(dataset_name, rows, current_iter, tb_logger)
        if report is not None:
            report.log(dataset_name, rows, getattr(self, 'metric_results', {}), current_iter, tb_logger)

    def results_columns(self):
        names, target = super().results_columns()
        if self.budget_report is None:
            return names, target
        return list(dict.fromkeys(names + [self.budget_report.key])), self.budget_report.table_target()
