"""CADyQWrapper: EDSR parity with EDSR_CADyQ (golden vectors, every mode, training, BitOPs), the bare backbone in
fp mode, stage loading from bare checkpoints, the quantizer data flow, and the presets of BasicSR's networks."""
import os

import pytest
import torch

import cadyq_plugin  # noqa: F401  (compat shim before anything imports basicsr)
from basicsr.utils.registry import ARCH_REGISTRY
from cadyq_plugin.archs import CADyQWrapper, EDSR_CADyQ
from cadyq_plugin.convert import convert_state_dict
from cadyq_plugin.metrics import count_layer_macs
from cadyq_plugin.models.stage_loading import load_stage_weights
from cadyq_plugin.quant import BitSelector, PAMSQuant, QConv2d, set_calibration

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'reference', 'edsr_cadyq_golden.pt')
EDSR = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 64, 'num_block': 16, 'upscale': 4}
SMALL_EDSR = dict(EDSR, num_feat=16, num_block=3)
# small versions of the networks tried, with (selectors, block features) their presets give
TINY = {
    'EDSR': ({'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 2}, 4, 2),
    'MSRResNet': ({'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 2, 'upscale': 4}, 4, 2),
    'RRDBNet': ({'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 2, 'num_grow_ch': 4}, 30, 2),
    'RCAN': ({'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 16, 'num_group': 2, 'num_block': 2, 'upscale': 4}, 8, 2),
    'SwinIR': ({'upscale': 4, 'img_size': 8, 'window_size': 4, 'depths': [2, 2], 'embed_dim': 12, 'num_heads': [2, 2],
                'mlp_ratio': 2, 'upsampler': 'pixelshuffle'}, 2, 2),
}


def tiny(name):
    return dict(TINY[name][0], type=name)


def bare(name, seed=0):
    torch.manual_seed(seed)
    opt = tiny(name)
    return ARCH_REGISTRY.get(opt.pop('type'))(**opt)


def randomise(net, seed=0):
    """Random ranges and selectors, so that chosen bits differ between samples and layers."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, PAMSQuant):
                module.alpha.uniform_(0.5, 4.0, generator=gen)
            elif isinstance(module, BitSelector):
                module.fc.weight.normal_(0, 0.05, generator=gen)
                module.fc.bias.normal_(0, 0.5, generator=gen)
    return net


def selectors(net):
    found = [(name, m) for name, m in net.named_modules() if isinstance(m, BitSelector)]
    return [(name, m.fc.in_features - 2, m.bits) for name, m in sorted(found, key=lambda item: item[1].index)]


@pytest.fixture(scope='module')
def golden_weights():
    golden = torch.load(GOLDEN, weights_only=True)
    converted, _ = convert_state_dict(golden['state_dict'], EDSR_CADyQ(), 'EDSR_CADyQ', 'cadyq', 4)
    return golden, converted


# ------------------------------------------------------------------------------------------------ EDSR parity
def test_wrapped_basicsr_edsr_reproduces_the_golden_vectors(golden_weights):
    """BasicSR's EDSR + default patterns = EDSR_CADyQ: the converted original checkpoint loads strictly (the
    quantizer names coincide) and gives the original's bits exactly and its output."""
    golden, converted = golden_weights
    net = CADyQWrapper(EDSR)
    net.load_state_dict(converted, strict=True)
    reference = EDSR_CADyQ()
    reference.load_state_dict(converted, strict=True)
    assert selectors(net) == selectors(reference) and len(selectors(net)) == 32
    x = golden['input_0_255'] / 255.0
    with torch.no_grad():
        sr, aux = net.eval()(x, return_aux=True)
        sr_ref, aux_ref = reference.eval()(x, return_aux=True)
    assert torch.equal(aux['bits'], golden['selector_bits'].float())
    assert golden['selector_bits'].unique().numel() == 3
    assert (sr * 255 - golden['sr_0_255']).abs().max() < 1e-3
    assert (aux['body'] - golden['body_out']).abs().max() < 1e-3
    assert torch.equal(aux['weighted_bits'], aux_ref['weighted_bits'])
    assert (sr - sr_ref).abs().max() < 1e-5  # BasicSR's EDSR shifts the mean as (x - mean) * 255
    assert all(torch.allclose(f, f_ref, atol=1e-3) for f, f_ref in zip(aux['feats'], aux_ref['feats']))


@pytest.mark.parametrize('mode', ['fp', 'pams', 'cadyq'])
def test_edsr_parity_in_every_mode_while_training(mode):
    """Same state dict keys, calibration, outputs, bits and gradients as EDSR_CADyQ in training steps (float64).

    BasicSR's EDSR shifts by its mean as ``(x - mean) * 255``, EDSR_CADyQ as ``x * 255 - mean * 255``: with a mean
    of 0.5 and inputs on a 1/256 grid both are exact, so the two networks see the same numbers (the PAMS range
    gradients are small differences of large sums and would amplify any rounding difference)."""
    torch.manual_seed(0)
    small = {k: SMALL_EDSR[k] for k in ('num_feat', 'num_block')}
    mean = (0.5, 0.5, 0.5)
    reference = randomise(EDSR_CADyQ(quant_mode=mode, rgb_mean=mean, **small)).double().train()
    net = CADyQWrapper(dict(SMALL_EDSR, rgb_mean=mean), quant_mode=mode).double().train()
    assert list(net.state_dict()) and sorted(net.state_dict()) == sorted(reference.state_dict())
    net.load_state_dict(reference.state_dict(), strict=True)
    assert selectors(net) == selectors(reference)
    x = torch.randint(0, 257, (3, 3, 12, 10), generator=torch.Generator().manual_seed(1)).double() / 256
    for calibrating in (True, False):
        for model in (net, reference):
            set_calibration(model, calibrating)
            model.zero_grad()
        sr, aux = net(x, return_aux=True)
        sr_ref, aux_ref = reference(x, return_aux=True)
        assert torch.equal(aux['bits'], aux_ref['bits']) and torch.equal(aux['body'], aux_ref['body'])
        assert all(torch.equal(f, f_ref) for f, f_ref in zip(aux['feats'], aux_ref['feats']))
        assert torch.allclose(sr, sr_ref, rtol=0, atol=1e-12)
        (sr.square().mean() + aux['weighted_bits'].sum() + aux['body'].mean()).backward()
        (sr_ref.square().mean() + aux_ref['weighted_bits'].sum() + aux_ref['body'].mean()).backward()
        grads = dict(reference.named_parameters())
        for name, param in net.named_parameters():
            expected = grads[name].grad
            assert torch.allclose(param.grad, expected, rtol=1e-6, atol=1e-9 * float(expected.abs().max())), name
        state = reference.state_dict()  # calibrated ranges included
        assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    if mode == 'cadyq':
        assert aux['bits'].unique().numel() > 1, 'the test needs bits that vary'


def test_edsr_parity_of_the_mac_table():
    """BitOPs see the same layers, MACs and input quantizers as for EDSR_CADyQ."""
    for mode in ('pams', 'cadyq'):
        assert count_layer_macs(CADyQWrapper(EDSR, quant_mode=mode), 18, 32) == count_layer_macs(
            EDSR_CADyQ(quant_mode=mode), 18, 32)


def test_bitops_of_the_wrapped_edsr_are_the_reference_figures():
    layers = count_layer_macs(CADyQWrapper(EDSR), 180, 320)
    assert sum(layer.macs for layer in layers) / 1e9 == pytest.approx(114.23, abs=0.005)
    assert sum(layer.macs for layer in layers if layer.act_kind == 'dynamic') / 1e9 == pytest.approx(67.95, abs=0.005)
    assert [layer.act_bits for layer in layers if layer.act_kind == 'dynamic'] == list(range(32))


# ------------------------------------------------------------------------------------------------ any network
@pytest.mark.parametrize('name', sorted(TINY))
def test_fp_mode_is_the_bare_backbone(name):
    backbone = bare(name)
    net = CADyQWrapper(tiny(name), quant_mode='fp')
    assert net.state_dict().keys() == backbone.state_dict().keys()
    net.load_state_dict(backbone.state_dict(), strict=True)
    x = torch.rand(2, 3, 8, 12)  # a multiple of SwinIR's window: no padding
    with torch.no_grad():
        sr, aux = net.eval()(x, return_aux=True)
        assert torch.equal(sr, backbone.eval()(x))
    assert aux['bits'].shape == (2, 0) and len(aux['feats']) == TINY[name][2]
    assert all(f.dim() == 4 for f in aux['feats']) and aux['body'].dim() == 4


@pytest.mark.parametrize('name', sorted(TINY))
def test_bare_checkpoint_is_stage_1_and_the_stages_load_into_each_other(name):
    """The model's stage loading: bare backbone -> pams (only quantizer entries start fresh) -> cadyq."""
    backbone = bare(name, seed=3)
    pams = CADyQWrapper(tiny(name), quant_mode='pams')
    fresh = load_stage_weights(pams, backbone.state_dict(), 'bare')
    quantizers = {f'{n}.' for n, m in pams.named_modules() if isinstance(m, PAMSQuant)}
    assert fresh and all(key.rsplit('.', 1)[0] + '.' in quantizers for key in fresh)
    for key, value in backbone.state_dict().items():
        assert torch.equal(pams.state_dict()[key], value)
    cadyq = CADyQWrapper(tiny(name), quant_mode='cadyq')
    with torch.no_grad():
        for module in pams.modules():
            if isinstance(module, PAMSQuant):
                module.alpha.fill_(3.5)
    fresh = load_stage_weights(cadyq, pams.state_dict(), 'pams')
    assert all('.fc.' in key for key in fresh)  # only the selectors' linears start fresh
    alphas = [m.alpha for m in cadyq.modules() if isinstance(m, PAMSQuant) and m.bits == 8]
    assert alphas and all(float(a.detach()) == 3.5 for a in alphas)


@pytest.mark.parametrize('name', sorted(TINY))
def test_every_quantized_conv_is_fed_by_its_input_quantizer(name):
    """An independent check of the traced data flow: at run time each QConv2d receives exactly the tensor its
    ``input_quantizer`` returned, and the selectors run once each, in index order."""
    net = randomise(CADyQWrapper(tiny(name))).eval()
    outputs, order, problems = {}, [], []
    for module in net.modules():
        if isinstance(module, (PAMSQuant, BitSelector)):
            module.register_forward_hook(lambda m, args, out: outputs.__setitem__(id(m), out))
        if isinstance(module, BitSelector):
            module.register_forward_pre_hook(lambda m, args: order.append(m.index))
        if isinstance(module, QConv2d):
            module.register_forward_pre_hook(
                lambda m, args: problems.append(m) if outputs.get(id(m.input_quantizer)) is not args[0] else None)
    convs = [m for m in net.modules() if isinstance(m, QConv2d)]
    with torch.no_grad():
        _, aux = net(torch.rand(2, 3, 9, 11), return_aux=True)
    assert convs and not problems
    assert order == list(range(net.n_selectors)) == list(range(TINY[name][1]))
    assert aux['bits'].shape == (2, TINY[name][1])


@pytest.mark.parametrize('name', sorted(TINY))
def test_training_step_reaches_every_parameter(name):
    """Selectors, ranges and every backbone weight get a gradient (DDP runs without find_unused_parameters)."""
    net = CADyQWrapper(tiny(name)).train()
    set_calibration(net, False)
    sr, aux = net(torch.rand(2, 3, 8, 8), return_aux=True)
    loss = sr.abs().mean() + aux['weighted_bits'].sum() * 1e-4 + aux['body'].mean()
    (loss + sum(f.mean() for f in aux['feats'])).backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert all(m.fc.weight.grad.abs().sum() > 0 for m in net.modules() if isinstance(m, BitSelector))


def test_swinir_pads_to_its_window_like_basicsrs_swinir_model():
    backbone = bare('SwinIR')
    net = CADyQWrapper(tiny('SwinIR'), quant_mode='fp')
    net.load_state_dict(backbone.state_dict())
    assert net.pad_to == 4
    x = torch.rand(1, 3, 9, 6)
    with torch.no_grad():
        padded = torch.nn.functional.pad(x, (0, 2, 0, 3), mode='reflect')  # BasicSR's SwinIRModel.test
        expected = backbone.eval()(padded)[:, :, :36, :24]
        assert torch.equal(net.eval()(x), expected)


def test_the_selector_count_follows_the_network_size():
    """Preset rule at other sizes: two selectors per EDSR/MSRResNet block or RCAB, five per residual dense block
    (three per RRDB), one per SwinIR RSTB."""
    cases = [
        ({'type': 'MSRResNet', 'num_feat': 8, 'num_block': 5}, 10),
        ({'type': 'RCAN', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 16, 'num_group': 3, 'num_block': 2}, 12),
        ({'type': 'RRDBNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 8, 'num_block': 3, 'num_grow_ch': 4}, 45),
        (dict(tiny('SwinIR'), depths=[2, 2, 2], num_heads=[2, 2, 2]), 3),
    ]
    for backbone, count in cases:
        net = CADyQWrapper(backbone)
        assert net.n_selectors == count
        assert sorted(m.index for m in net.modules() if isinstance(m, BitSelector)) == list(range(count))


def test_residual_branch_quantizers_are_fixed_8_bit_and_not_in_the_fab():
    net = CADyQWrapper(tiny('RCAN'))
    fixed = {n: m for n, m in net.named_modules() if isinstance(m, PAMSQuant) and n.endswith('quant_res')}
    assert len(fixed) == 4 and all(m.bits == 8 for m in fixed.values())
    assert not any(isinstance(m, QConv2d) for n, m in net.named_modules() if '.rcab.3.' in n)  # attention stays FP
    assert not isinstance(net.body[0].conv, QConv2d) and not isinstance(net.conv_first, QConv2d)


def test_swinir_macs_count_its_linear_layers_like_mmengine():
    """Convs and linears (attention projections, MLPs) from the module shapes; mmengine's FLOP analysis of the
    bare backbone is the independent count (its ``matmul`` entries, attention's q @ k and attn @ v, are no layers
    and are not counted)."""
    from mmengine.analysis import FlopAnalyzer
    backbone = bare('SwinIR').eval()
    analyzer = FlopAnalyzer(backbone, (torch.rand(1, 3, 8, 12),))
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    expected = analyzer.by_operator()
    layers = {layer.name: layer for layer in count_layer_macs(CADyQWrapper(tiny('SwinIR')), 8, 12)}
    assert sum(layer.macs for layer in layers.values()) == expected['conv'] + expected['linear']
    tokens, dim = 8 * 12, 12
    assert layers['layers.1.residual_group.blocks.0.attn.qkv'].macs == tokens * dim * 3 * dim
    assert layers['layers.1.residual_group.blocks.0.mlp.fc2'].macs == tokens * 2 * dim * dim
    assert layers['layers.0.conv'].act_kind == 'dynamic' and layers['layers.0.conv'].macs == tokens * dim * dim * 9
    assert all(layer.act_kind == 'fp' for name, layer in layers.items() if '.attn.' in name or '.mlp.' in name)
