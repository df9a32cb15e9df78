"""Training to a bit budget: the controller's update law, the BitOPs conversion, the model that steers it (in one
process and over two gloo ranks), the config check's refusals and where the budget is reported."""
import copy
import logging
import os

import pytest
import torch
from test_model import _batches, model_opt

import cadyq_plugin  # noqa: F401  (compat shim before basicsr)
from cadyq_plugin.archs import EDSR_CADyQ, IDN_CADyQ
from cadyq_plugin.archs.wrapper_arch import CADyQWrapper
from cadyq_plugin.config_check import ConfigError, check_options
from cadyq_plugin.losses import BitLoss
from cadyq_plugin.budget.controller import BudgetController
from cadyq_plugin.metrics import bitops_per_bit, count_layer_macs, forward_bitops
from cadyq_plugin.budget.target import BitBudget
from cadyq_plugin.models import CADyQModel
from cadyq_plugin.budget.report import BudgetReport
from cadyq_plugin.options import read_yml
from cadyq_plugin.quant import BitSelector
from cadyq_plugin.reporting import read_results_csv, write_results_table
from tiny_workspace import OPTIONS

STAGE3 = os.path.join(OPTIONS, 'train_edsrbaseline_cadyq.yml')
IDN_STAGE3 = os.path.join(OPTIONS, 'train_idn_cadyq.yml')
TEST = os.path.join(OPTIONS, 'test_edsrbaseline_cadyq_image.yml')
IDN_SMALL = {'num_feat': 32, 'd': 8, 's': 4, 'num_block': 2, 'upscale': 2, 'calib_iters': 0}


def hand_price(errors, gain, floor, s):
    """The price law written out: after each error, the running error and the price it steps by."""
    running, price, out = None, 0.0, []
    for e in errors:
        running = e if running is None else s * running + (1 - s) * e
        price += gain * (abs(price) + floor) * running
        out.append((running, price))
    return out


# ------------------------------------------------------------------------------------------------ controller
def test_the_price_follows_its_integral_law_and_changes_sign():
    errors = [3.0, 2.5, 1.0, -0.5, -1.5, -1.0, -3.0, -4.0, -4.0, 2.0]
    controller = BudgetController(gain=0.1, floor=0.05, smoothing=0.5)
    expected = hand_price(errors, 0.1, 0.05, 0.5)
    assert min(p for _, p in expected) < 0 < max(p for _, p in expected), 'the price crosses 0 both ways'
    before = 0.0
    for error, (running, price) in zip(errors, expected):
        step = controller.update(torch.tensor(error))
        assert step.item() == pytest.approx(price - before, rel=1e-5, abs=1e-7)
        assert (controller.running.item(), controller.price.item()) == pytest.approx((running, price), rel=1e-5)
        before = price
    steps = [BudgetController(0.1, 0.05, 0.5).update(torch.tensor(e)).item() for e in (1.0, -1.0)]
    assert steps == pytest.approx([0.005, -0.005]), 'at price 0: floor x gain per bit, either sign'


def test_the_price_step_is_relative_to_the_price():
    """The same error moves a price of 10 a hundred times more than a price of 0.1 (floor aside): the step follows
    the logits' scale, whatever the backbone."""
    small, large = BudgetController(0.05, 1e-6, 0.5), BudgetController(0.05, 1e-6, 0.5)
    small.load_state_dict({'steps': 5, 'running': 0.0, 'price': 0.1})
    large.load_state_dict({'steps': 5, 'running': 0.0, 'price': 10.0})
    ratio = large.update(torch.tensor(0.5)) / small.update(torch.tensor(0.5))
    assert ratio.item() == pytest.approx(100.0, rel=1e-4)


def test_controller_state_round_trips_exactly():
    a = BudgetController(0.05, 0.02, 0.9)
    for e in (1.0, 0.7, 0.2):
        a.update(torch.tensor(e))
    b = BudgetController(0.05, 0.02, 0.9)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert a.state_dict()['steps'] == 3 and all(t.device.type == 'cpu' for k, t in a.state_dict().items()
                                                 if k != 'steps')
    assert [a.update(torch.tensor(e)).item() for e in (-0.3, 0.1)] == [b.update(torch.tensor(e)).item()
                                                                     for e in (-0.3, 0.1)]
    assert torch.equal(a.price, b.price) and torch.equal(a.running, b.running)


def test_a_state_of_the_earlier_weight_controller_is_refused_by_name():
    with pytest.raises(ValueError, match=r"bit-loss weight controller of an earlier version \(keys \['integral', "
                                         r"'running', 'steps'\]\)"):
        BudgetController(0.05, 0.02, 0.5).load_state_dict({'steps': 3, 'running': 0.5, 'integral': 1.0})


def test_bit_loss_with_a_target_holds_the_controller_and_is_no_loss():
    loss = BitLoss(loss_weight=1e-4, target_fab=6.0, gain=0.1, floor=0.01)
    assert loss.target == ('fab', 6.0) and (loss.controller.gain, loss.controller.floor) == (0.1, 0.01)
    with pytest.raises(RuntimeError, match='is no loss'):
        loss(torch.tensor([30.0, 34.0]), 5000)
    reference = BitLoss()
    assert reference.controller is None and reference.weight(2000) == pytest.approx(1e-4 + 2e-6)
    assert reference(torch.tensor([30.0, 34.0]), 2000).item() == pytest.approx((1e-4 + 2e-6) * 64)


@pytest.mark.parametrize('kwargs, fragment', [
    ({'target_fab': 5.0, 'target_bitops': 60}, 'target_bitops = 60: expected only one target'),
    ({'target_fab': -1}, 'target_fab = -1: expected a positive number'),
    ({'target_fab': True}, 'target_fab = True: expected a positive number'),
    ({'target_fab': 5.0, 'gain': 0}, 'gain = 0: expected a positive number'),
    ({'target_fab': 5.0, 'floor': -1}, 'floor = -1: expected a positive number'),
    ({'target_fab': 5.0, 'smoothing': 1.0}, 'smoothing = 1.0: expected a number in [0, 1)'),
])
def test_bit_loss_refuses_bad_budget_arguments(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace('[', r'\[').replace(')', r'\)')):
        BitLoss(**kwargs)


# ------------------------------------------------------------------------------------------------ BitOPs budget
def idn_block_slopes(h, w, num_block=4):
    """Each IDN selector's BitOPs per bit by hand: H*W*Cin/groups*Cout*9 MACs of the conv it feeds, x 8/32 / 32."""
    per_block = [64 * 48, 48 // 4 * 32, 32 * 64, 48 * 64, 64 // 4 * 48, 48 * 80]
    return [h * w * c * 9 * (8 / 32) / 32 for c in per_block] * num_block


def test_bitops_are_linear_in_each_selectors_bit():
    layers = count_layer_macs(IDN_CADyQ(), 180, 320)
    base, slopes = bitops_per_bit(layers, 24)
    assert slopes == pytest.approx(idn_block_slopes(180, 320))
    torch.manual_seed(0)
    bits = torch.tensor([4.0, 6.0, 8.0])[torch.randint(0, 3, (24,))]
    assert forward_bitops(layers, bits) == pytest.approx(base + sum(s * b for s, b in zip(slopes, bits.tolist())))


def test_a_bitops_target_is_a_target_on_the_bitops_weighted_mean_bit():
    with torch.device('meta'):
        net = IDN_CADyQ()
    budget = BitBudget.of_network('bitops', 5.8, net)
    slopes = torch.tensor(idn_block_slopes(180, 320))
    assert budget.selector_weights.tolist() == pytest.approx((slopes * 24 / slopes.sum()).tolist())
    assert budget.selector_weights[0] / budget.selector_weights[1] == pytest.approx(8.0), '64->48 vs 48->32 g4'
    layers = count_layer_macs(IDN_CADyQ(), 180, 320)
    assert forward_bitops(layers, fab=budget.target_bit) / 1e9 == pytest.approx(5.8)
    assert budget.reachable() == pytest.approx((forward_bitops(layers, fab=4) / 1e9,
                                                forward_bitops(layers, fab=8) / 1e9))
    bits = torch.tensor([[8.0, 4.0] * 12, [4.0, 8.0] * 12])
    assert budget.mean_bit(bits).item() == pytest.approx(((bits @ slopes).mean() / slopes.sum()).item())
    assert budget.bitops_of(bits) == pytest.approx(forward_bitops(layers, bits.mean(dim=0)) / 1e9)
    assert budget.to_user(budget.mean_bit(bits)) == pytest.approx(budget.bitops_of(bits), rel=1e-6)


def test_edsr_bitops_budget_matches_the_reference_numbers():
    """docs/method.md#fab-and-bitops: EDSR-baseline at FAB 6.0 is 49.47 G; all selectors weigh the same, so FAB and BitOPs agree."""
    with torch.device('meta'):
        budget = BitBudget.of_network('bitops', 49.47, EDSR_CADyQ())
    assert budget.target_bit == pytest.approx(6.0, abs=0.01)
    assert torch.equal(budget.selector_weights, torch.ones(32))
    assert budget.reachable() == pytest.approx((48.41, 50.53), abs=0.005)


# ------------------------------------------------------------------------------------------------ the model
def budget_model(tmp_path, bit_opt, network=None, **kwargs):
    opt = model_opt(tmp_path, **kwargs)
    opt['train']['bit_opt'] = {'type': 'BitLoss', 'loss_weight': 1e-4, **bit_opt}
    if network is not None:
        opt['network_g'] = network
    return CADyQModel(opt)


def losses_of(model, batch, current_iter):
    model.feed_data(batch)
    model.output, aux = model.net_g(model.lq, return_aux=True)
    loss_dict = {}
    model.compute_losses(aux, current_iter, loss_dict)
    return aux, loss_dict


def selectors_of(model):
    return sorted((m for m in model.net_g.modules() if isinstance(m, BitSelector)), key=lambda m: m.index)


def test_the_model_prices_the_bits_of_each_batch_and_logs_target_running_fab_and_price(tmp_path):
    """With the selectors' optimizer at lr 0, each selector's bias is its initial bias minus the price times the
    candidates' bits after every step; no bit loss is added."""
    torch.manual_seed(0)
    model = budget_model(tmp_path, {'target_fab': 6.0, 'gain': 0.5, 'floor': 0.1, 'smoothing': 0.5}, selector_lr=0.0)
    initial = [m.fc.bias.detach().clone() for m in selectors_of(model)]
    errors = []
    for it, batch in enumerate(_batches(4), start=1):
        model.feed_data(batch)
        model.optimize_parameters(it)
        errors.append(model.log_dict['avg_bit'] - 6.0)
        running, price = hand_price(errors, 0.5, 0.1, 0.5)[-1]
        assert model.log_dict['target_fab'] == 6.0 and 'l_bit' not in model.log_dict
        assert model.log_dict['running_fab'] == pytest.approx(6.0 + running, rel=1e-6)
        assert model.log_dict['bit_price'] == pytest.approx(price, rel=1e-5)
        for selector, bias in zip(selectors_of(model), initial):
            assert torch.allclose(selector.fc.bias, bias - price * torch.tensor([4.0, 6.0, 8.0]), atol=1e-6)
    assert errors[0] == 2.0 and any(e < 2.0 for e in errors), 'the price lowered the bits from all 8'


def test_with_a_budget_the_selectors_learn_from_the_distortion_losses_only(tmp_path):
    """The budget adds no gradient: the selectors' gradients with a target are those of the same step without any
    bit loss (the reference bit loss would add its own)."""
    grads = {}
    for name, bit_opt in (('budget', {'target_fab': 6.0}), ('none', None), ('reference', {})):
        torch.manual_seed(0)
        if bit_opt is None:
            model = CADyQModel(model_opt(tmp_path, bit_weight=None))
        else:
            model = budget_model(tmp_path, bit_opt)
        model.feed_data(next(_batches(1)))
        model.optimize_parameters(1)
        grads[name] = [m.fc.weight.grad.clone() for m in selectors_of(model)]
    assert all(torch.equal(a, b) for a, b in zip(grads['budget'], grads['none']))
    assert not all(torch.equal(a, b) for a, b in zip(grads['reference'], grads['none']))


def test_a_bitops_budget_prices_each_selector_by_its_bitops(tmp_path):
    torch.manual_seed(0)
    network = dict(IDN_SMALL, type='IDN_CADyQ', quant_mode='cadyq')
    target = 7.7  # G at 1280x720 (LR 640x360 at x2) of the small IDN: between all-4 (7.55) and all-8 (7.98)
    model = budget_model(tmp_path, {'target_bitops': target, 'gain': 0.1, 'floor': 0.1}, network=network,
                         selector_lr=0.0)
    budget = model.bit_budget
    low, high = budget.reachable()
    assert low < target < high
    layers = count_layer_macs(IDN_CADyQ(**{**IDN_SMALL, 'quant_mode': 'cadyq'}), 360, 640)
    base, slopes = bitops_per_bit(layers, 12)
    slopes = torch.tensor(slopes)
    initial = [m.fc.bias.detach().clone() for m in selectors_of(model)]
    model.feed_data(next(_batches(1)))
    model.optimize_parameters(1)
    bits = model.log_dict['avg_bit']  # every selector chose the largest candidate: mean bit 8 whatever the weights
    assert bits == 8.0
    error = 8.0 - (target * 1e9 - base) / slopes.sum().item()
    price = 0.1 * 0.1 * error
    assert model.log_dict['target_bitops'] == pytest.approx(target)
    assert model.log_dict['running_bitops'] == pytest.approx((base + 8.0 * slopes.sum().item()) / 1e9, rel=1e-5)
    assert model.log_dict['bit_price'] == pytest.approx(price, rel=1e-4)
    weights = slopes * 12 / slopes.sum()
    for selector, bias, weight in zip(selectors_of(model), initial, weights):
        assert torch.allclose(selector.fc.bias, bias - price * weight * torch.tensor([4.0, 6.0, 8.0]), atol=1e-6)


def test_the_controller_state_is_in_the_training_state(tmp_path):
    bit_opt = {'target_fab': 6.0}
    torch.manual_seed(0)
    model = budget_model(tmp_path, bit_opt)
    batches = list(_batches(4))
    for it, batch in enumerate(batches[:2], start=1):
        model.feed_data(batch)
        model.optimize_parameters(it)
    extras = model.training_state_extras()
    state = model.cri_bit.controller.state_dict()
    assert extras['bit_budget']['steps'] == 2 and torch.equal(extras['bit_budget']['price'], state['price'])
    resumed = budget_model(tmp_path, bit_opt)
    resumed.load_training_state_extras(copy.deepcopy(extras))
    assert resumed.cri_bit.controller.steps == 2
    assert torch.equal(resumed.cri_bit.controller.price, model.cri_bit.controller.price)
    assert torch.equal(resumed.cri_bit.controller.running, model.cri_bit.controller.running)
    assert 'bit_budget' not in CADyQModel(model_opt(tmp_path)).training_state_extras(), 'no budget, no state'


def _fab_history(tmp_path, target, start_low, iters=40):
    """``[(batch FAB, price)]`` of a small EDSR trained to ``target`` from all-largest (or all-smallest) bits."""
    torch.manual_seed(0)
    model = budget_model(tmp_path, {'target_fab': target}, selector_lr=1e-3)
    if start_low:  # every selector starts at the smallest candidate instead of the largest
        for module in model.net_g.modules():
            if isinstance(module, BitSelector):
                with torch.no_grad():
                    module.fc.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))
    history = []
    for it, batch in enumerate(_batches(iters), start=1):
        model.feed_data(batch)
        model.optimize_parameters(it)
        history.append((model.log_dict['avg_bit'], model.log_dict['bit_price']))
    return history


@pytest.mark.parametrize('target, start_low', [(5.0, False), (6.0, True)], ids=['below-the-start', 'above-the-start'])
def test_the_fab_moves_to_a_target_below_and_above_the_start(tmp_path, target, start_low):
    """The default settings: from above the price is positive (bits go down), from below negative (bits go up), and
    the batch FAB reaches the target."""
    history = _fab_history(tmp_path, target, start_low)
    fabs = [fab for fab, _ in history]
    assert fabs[0] == (4.0 if start_low else 8.0)
    assert (history[0][1] < 0) == start_low and history[0][1] != 0
    reached = [i for i, fab in enumerate(fabs) if (fab >= target if start_low else fab <= target)]
    assert reached and reached[0] < 35, fabs


# ------------------------------------------------------------------------------------------------ two ranks
def _global_fab_worker(rank, store, results):
    """Rank r sees a batch of FAB 4 + 2r; both must steer by the global batch's FAB (5)."""
    import json
    torch.distributed.init_process_group('gloo', init_method=f'file://{store}', rank=rank, world_size=2)
    torch.manual_seed(0)
    opt = model_opt(results)
    opt['train']['bit_opt'] = {'type': 'BitLoss', 'target_fab': 6.0, 'gain': 0.1, 'floor': 0.1}
    model = CADyQModel(opt)
    bits = torch.full((2, model.net_g.n_selectors), 4.0 + 2 * rank)
    loss_dict = {}
    model._steer_budget({'bits': bits}, loss_dict)
    model._apply_price()
    biases = [m.fc.bias.tolist() for m in selectors_of(model)]
    with open(os.path.join(results, f'{rank}.json'), 'w') as f:
        json.dump({'logged': {k: v.item() for k, v in loss_dict.items()}, 'biases': biases}, f)
    torch.distributed.destroy_process_group()


def test_every_rank_steers_by_the_global_batch(tmp_path):
    import json
    torch.multiprocessing.spawn(_global_fab_worker, args=(str(tmp_path / 'store'), str(tmp_path)), nprocs=2)
    found = [json.loads((tmp_path / f'{rank}.json').read_text()) for rank in range(2)]
    assert found[0] == found[1]
    assert found[0]['logged']['running_fab'] == 5.0
    assert found[0]['logged']['bit_price'] == pytest.approx(0.1 * 0.1 * -1.0)


# ------------------------------------------------------------------------------------------------ config check
def problems(opt, path=STAGE3, phase='train'):
    with pytest.raises(ConfigError) as info:
        check_options(opt, path, phase, check_files=False)
    return info.value.problems


def with_target(path=STAGE3, **bit_opt):
    opt = read_yml(path)
    opt['train']['bit_opt'].update(bit_opt)
    return opt


@pytest.mark.parametrize('target', [5.0, 4.01, 7.99])
def test_reachable_fab_targets_pass(target):
    check_options(with_target(target_fab=target), STAGE3, check_files=False)


@pytest.mark.parametrize('target, fragment', [
    (4, 'at an end every selector can only sit at that bit-width'),
    (8.0, 'at an end'),
    (3.5, 'the selectors cannot reach it'),
    (9, 'the selectors cannot reach it'),
])
def test_a_fab_target_outside_the_candidates_is_refused(target, fragment):
    found = problems(with_target(target_fab=target))
    assert len(found) == 1 and found[0].startswith(f'train.bit_opt.target_fab = {target!r}: expected a FAB strictly '
                                                   'between the smallest and largest candidate of network_g.bits')
    assert fragment in found[0]


def test_the_fab_range_follows_the_candidate_list():
    opt = with_target(target_fab=3.0)
    opt['network_g']['bits'] = [2, 4]
    check_options(opt, STAGE3, check_files=False)
    opt['network_g']['bits'] = [4, 8]
    assert '(4 < target < 8)' in problems(opt)[0]


@pytest.mark.parametrize('target, ok', [(48.40, False), (48.42, True), (50.52, True), (50.54, False), (100, False)])
def test_a_bitops_target_must_lie_between_all_lowest_and_all_highest_bits(target, ok):
    """EDSR-baseline at 1280x720: 48.41 G with every selector at 4 bits, 50.53 G at 8 (docs/method.md#fab-and-bitops)."""
    opt = with_target(target_bitops=target)
    if ok:
        check_options(opt, STAGE3, check_files=False)
        return
    found = problems(opt)
    assert len(found) == 1 and found[0].startswith(f'train.bit_opt.target_bitops = {target!r}: expected BitOPs '
                                                   'strictly between 48.41 G (every selector at 4 bits) and 50.53 G')


def test_the_bitops_range_is_the_networks():
    check_options(with_target(IDN_STAGE3, target_bitops=5.8), IDN_STAGE3, check_files=False)
    assert 'between 5.37 G' in problems(with_target(IDN_STAGE3, target_bitops=5.0), IDN_STAGE3)[0]


def test_a_budget_on_a_wrapped_backbone_built_from_values():
    """SwinIR's constructor reads tensor values (not possible on ``meta``): the range is still counted, and equals
    the one of the network built on the CPU."""
    path = os.path.join(OPTIONS, 'train_swinir_cadyq.yml')
    small = {'depths': [2], 'embed_dim': 12, 'num_heads': [2], 'img_size': 16}
    opt = with_target(path, target_bitops=1e6)
    for network in (opt['network_g'], opt['network_t']):
        network['backbone'].update(small)
    net_opt = dict(opt['network_g'])
    net = CADyQWrapper(**{k: v for k, v in net_opt.items() if k != 'type'})
    low, high = BitBudget.of_network('bitops', 1.0, net).reachable()
    found = problems(opt, path)
    assert found == [f'train.bit_opt.target_bitops = 1000000.0: expected BitOPs strictly between {low:.2f} G (every '
                     f'selector at 4 bits) and {high:.2f} G (every selector at 8) for CADyQWrapper(SwinIR) at a '
                     '1280x720 output: the selectors cannot reach it']
    opt['train']['bit_opt']['target_bitops'] = (low + high) / 2
    check_options(opt, path, check_files=False)
    opt['train']['bit_opt'].pop('target_bitops')
    opt['train']['bit_opt']['target_fab'] = 6.0
    check_options(opt, path, check_files=False)


def test_both_targets_at_once_are_refused():
    found = problems(with_target(target_fab=5.0, target_bitops=49.5))
    assert found == ["train.bit_opt.target_bitops = 49.5: expected only one target: target_fab is 5.0 too (a FAB and a "
                     'BitOPs budget cannot both be met)']


@pytest.mark.parametrize('mode', ['pams', 'fp'])
def test_a_target_on_a_network_without_selectors_is_refused(mode):
    opt = with_target(target_fab=5.0)
    opt['network_g']['quant_mode'] = mode
    found = [p for p in problems(opt) if p.startswith('train.bit_opt')]
    assert found and 'needs network_g.quant_mode cadyq' in found[0]


def test_a_target_on_a_stock_arch_is_refused():
    opt = with_target(target_fab=5.0)
    opt['network_g'] = {'type': 'MSRResNet', 'upscale': 4}
    opt['network_t'] = {'type': 'MSRResNet', 'upscale': 4}
    found = [p for p in problems(opt) if p.startswith('train.bit_opt.target_fab')]
    assert found == ["train.bit_opt.target_fab = 5.0: needs a CADyQ arch with bit selectors; network_g.type is "
                     "'MSRResNet'"]


def test_bad_controller_settings_are_named_before_work_starts():
    assert problems(with_target(target_fab=5.0, smoothing=2)) == [
        'train.bit_opt.smoothing = 2: expected a number in [0, 1) (of the running error)']


@pytest.mark.parametrize('target', [{'target_fab': 5.0}, {}], ids=['with-a-target', 'without'])
def test_settings_of_the_earlier_weight_controller_are_refused_with_what_replaced_them(target):
    found = problems(with_target(**target, kp=20, integral_band=1))
    assert found == [f'train.bit_opt.{key} = {value}: is a setting of the bit-loss weight controller of earlier '
                     "versions: a budget is now held by a price on the selectors' logits, set by gain / floor (see "
                     f'docs/bit_budget.md); remove {key}' for key, value in (('kp', 20), ('integral_band', 1))]


def test_a_test_options_file_names_its_budget_under_val():
    opt = read_yml(TEST)
    opt['val']['target_fab'] = 5.0
    check_options(opt, TEST, 'test', check_files=False)
    opt['val']['target_fab'] = 8
    assert problems(opt, TEST, 'test')[0].startswith('val.target_fab = 8: expected a FAB strictly between')
    train = with_target()
    train['val']['target_fab'] = 5.0
    assert problems(train) == ['val.target_fab = 5.0: is for test options files: train to it with '
                               'train.bit_opt.target_fab (validation then reports it)']


# ------------------------------------------------------------------------------------------------ reporting
def test_results_table_has_a_target_row_before_the_mean(tmp_path):
    rows = [{'name': 'a', 'psnr': 30.0, 'avg_bit': 5.5}, {'name': 'b', 'psnr': 28.0, 'avg_bit': 4.5}]
    csv_path, md_path = write_results_table(rows, str(tmp_path), 'Set5', ['psnr', 'avg_bit'], target={'avg_bit': 5.2})
    back = read_results_csv(csv_path)
    assert [r['name'] for r in back] == ['a', 'b', 'target', 'mean']
    assert back[2] == {'name': 'target', 'avg_bit': 5.2} and back[3]['avg_bit'] == 5.0
    assert '| target |  | 5.20 |' in open(md_path).read()


class Recorder:

    def __init__(self):
        self.scalars = {}

    def add_scalar(self, tag, value, step):
        self.scalars[tag] = (value, step)


def test_budget_report_per_image_log_line_and_tensorboard(caplog):
    with torch.device('meta'):
        net = IDN_CADyQ()
    layers = count_layer_macs(IDN_CADyQ(), 180, 320)
    metrics = {'psnr': {'type': 'calculate_psnr'}, 'fab': {'type': 'calculate_avg_bit'}}
    # image a: one forward; image b: two patches (FAB = unweighted mean over patches)
    rows = [{'name': 'a', 'bits': torch.full((1, 24), 4.0)},
            {'name': 'b', 'bits': torch.stack([torch.full((24,), 8.0), torch.full((24,), 6.0)])}]
    report = BudgetReport(BitBudget.of_network('fab', 5.5, net), metrics)
    report.annotate(rows)
    assert report.key == 'fab' and [r['fab'] for r in rows] == [4.0, 7.0]
    tb = Recorder()
    with caplog.at_level(logging.INFO, logger='basicsr'):
        logger = logging.getLogger('basicsr')
        logger.addHandler(caplog.handler)
        report.log('Set5', rows, {'psnr': 27.5, 'fab': 5.5}, 100, tb)
        logger.removeHandler(caplog.handler)
    bitops = (forward_bitops(layers, fab=4) + forward_bitops(layers, fab=7)) / 2 / 1e9
    assert (f'Bit budget on Set5: target_fab 5.50 | reached FAB 5.50 (+0.00), BitOPs {bitops:.2f} G at 1280x720 | '
            'psnr 27.5000') in caplog.text
    assert tb.scalars == {'metrics/Set5/fab_target': (5.5, 100)}, 'the reached FAB is the fab metric, logged already'

    report = BudgetReport(BitBudget.of_network('bitops', 5.8, net), metrics)
    report.annotate(rows)
    assert [r['bitops_1280x720'] for r in rows] == pytest.approx([forward_bitops(layers, fab=4) / 1e9,
                                                                  forward_bitops(layers, fab=7) / 1e9])
    assert report.table_target() == {'bitops_1280x720': 5.8}
    report.log('Set5', rows, {}, 100, tb)
    assert tb.scalars['metrics/Set5/bitops_1280x720'] == (pytest.approx(bitops), 100)
    assert tb.scalars['metrics/Set5/bitops_1280x720_target'] == (5.8, 100)


# ------------------------------------------------------------------------------------------------ evidence tool
def test_evidence_tool_reads_logs_and_writes_table_and_plot(tmp_path):
    from cadyq_plugin.tools import budget_evidence
    log = tmp_path / 'train.log'
    lines = []
    for it in range(1, 11):
        lines.append(f'2026-01-01 INFO: [budge..][epoch:  0, iter:{it:8,d}, lr:(1.000e-04,)] [eta: 0:00:01, '
                     f'time (data): 0.1 (0.0)] l_pix: 1.0000e+01 target_fab: 5.0000e+00 running_fab: {5 + 1 / it:.4e} '
                     f'bit_price: {0.1 * it:.4e} avg_bit: {5 + 0.5 / it:.4e} ')
        if it == 2:
            lines.append('2026-01-01 INFO: Bit budget on val: target_fab 5.00 | reached FAB 5.30 (+0.30), BitOPs '
                         '1.00 G at 1280x720 | psnr 26.0000')
    log.write_text('\n'.join(lines) + '\n')
    curve, validations = budget_evidence.parse_train_log(str(log))
    assert sorted(curve) == list(range(1, 11)) and curve[4]['running_fab'] == 5.25 and validations == [(2, 5.3)]
    summary = budget_evidence.summarize(curve, tail=0.2)  # the last 20 % of the run: iterations 9 and 10
    assert summary == {'train_fab': pytest.approx((5 + 0.5 / 9 + 5 + 0.5 / 10) / 2, abs=1e-4), 'running_fab': 5.1,
                       'final_price': 1.0}
    result = {'arch': 'edsr', 'target': 5.0, **summary, 'net_fab': 5.4, 'val_fab': 6.3, 'psnr': 26.0, 'curve': curve,
              'validations': validations}
    assert budget_evidence.within(result) and not budget_evidence.within({**result, 'net_fab': 5.6})
    assert not budget_evidence.within({**result, 'train_fab': 5.3})
    assert '| edsr | 5.00 | 5.05 | 5.40 | yes | 6.30 | 26.00 |' in budget_evidence.format_table([result], 0.2)
    assert 'train FAB (last 20% of the run)' in budget_evidence.format_table([result], 0.2)
    budget_evidence.plot([result], str(tmp_path / 'fab.png'))
    assert (tmp_path / 'fab.png').read_bytes()[:4] == b'\x89PNG'


def test_the_network_fab_is_the_mean_over_the_images_of_each_forwards_fab(tmp_path):
    """``network_fab`` batches images of equal size; the result equals each image run alone."""
    import cv2
    import numpy as np
    from cadyq_plugin.tools import budget_evidence
    from cadyq_plugin.tools.derive_options import derive_options
    torch.manual_seed(0)
    network = {'type': 'EDSR_CADyQ', 'quant_mode': 'cadyq', 'num_feat': 8, 'num_block': 1, 'calib_iters': 0}
    net = EDSR_CADyQ(**{k: v for k, v in network.items() if k != 'type'}).eval()
    with torch.no_grad():  # choose by the content: 8 bits for the patches with the larger gradient
        for module in net.modules():
            if isinstance(module, BitSelector):
                module.fc.weight.zero_()
                module.fc.weight[:, 0] = torch.tensor([0.0, 0.0, 1.0])
                module.fc.bias.copy_(torch.tensor([0.0, -100.0, -30.0]))
    os.makedirs(tmp_path / 'models')
    torch.save({'params': net.state_dict()}, tmp_path / 'models' / 'net_g_latest.pth')
    derive_options(STAGE3, {'network_g': network}, str(tmp_path / 'opt.yml'))
    rng = np.random.default_rng(0)
    os.makedirs(tmp_path / 'lr')
    images = []
    for i, size in enumerate([12, 12, 12, 16, 12]):
        image = (rng.random((size, size, 3)) * 255 * (i % 2)).astype(np.uint8)  # flat (black) or noisy
        cv2.imwrite(str(tmp_path / 'lr' / f'{i}.png'), image)
        images.append(torch.from_numpy(image[:, :, ::-1].astype(np.float32) / 255).permute(2, 0, 1)[None])
    with torch.no_grad():
        alone = [net(image, return_aux=True)[1]['bits'].float().mean().item() for image in images]
    assert len(set(alone)) > 1
    found = budget_evidence.network_fab(str(tmp_path / 'opt.yml'), str(tmp_path), str(tmp_path / 'lr'), batch=2)
    assert found == pytest.approx(sum(alone) / len(alone))
