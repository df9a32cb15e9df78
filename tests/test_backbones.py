"""CARN, IDN and SRResNet (docs/method.md#backbones, docs/method.md#fab-and-bitops): selector counts and init, names shared across modes, per-sample
independence, shapes and BitOPs at the paper's 1280x720 output."""
import pytest
import torch

import cadyq_plugin  # noqa: F401  (compat shim before anything imports basicsr)
from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY
from cadyq_plugin.metrics import count_layer_macs, forward_bitops
from cadyq_plugin.quant import BitRecord, BitSelector, PAMSQuant, image_gradient_feature

# arch -> (selectors, feats, quantized MACs G, fixed-8-bit MACs G, other MACs G) at LR 320x180, x4 (docs/method.md#fab-and-bitops)
REFERENCE = {
    'CARN_CADyQ': (18, 9, 38.22, 0.0, 52.65),
    'IDN_CADyQ': (24, 4, 27.34, 2.22, 4.38),
    'SRResNet_CADyQ': (32, 16, 67.95, 0.0, 59.82),
}
FP_TOTAL = {'CARN_CADyQ': 90.87, 'IDN_CADyQ': 33.94, 'SRResNet_CADyQ': 127.77}
# small variants for the behaviour tests (same structure, fewer channels / blocks)
SMALL = {
    'CARN_CADyQ': dict(num_feat=16, num_block=2, num_res_block=2),
    'IDN_CADyQ': dict(num_feat=32, d=8, s=4, num_block=2),
    'SRResNet_CADyQ': dict(num_feat=16, num_block=3),
}
NAMES = sorted(REFERENCE)


def _quantizer_prefixes(net):
    return tuple(f'{name}.' for name, m in net.named_modules() if isinstance(m, (PAMSQuant, BitSelector)))


def _shared_keys(net):
    """State-dict entries that are not quantizer / selector entries, with their shapes."""
    prefixes = _quantizer_prefixes(net)
    return {k: tuple(v.shape) for k, v in net.state_dict().items() if not k.startswith(prefixes)}


def _contents(batch=4, h=12, w=10, seed=0):
    """LR inputs in [0, 1] with very different content: noise, a smooth ramp, faint noise, a flat patch."""
    gen = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, w).view(1, 1, w).expand(3, h, w)
    imgs = [torch.rand(3, h, w, generator=gen), ramp, 0.4 + 0.1 * torch.rand(3, h, w, generator=gen),
            torch.full((3, h, w), 0.5)]
    return torch.stack([imgs[i % len(imgs)] for i in range(batch)]).double()


def _randomise(net, seed=0):
    """Random alphas, selectors and BatchNorm statistics, so that chosen bits vary across samples and layers
    (CARN's features live on the [0, 1] scale and its image feature is unscaled: larger selector weights)."""
    gen = torch.Generator().manual_seed(seed)
    weight_std = 2.0 if net.img_range == 1.0 else 0.05
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, PAMSQuant):
                m.alpha.uniform_(0.5, 4.0, generator=gen)
            elif isinstance(m, BitSelector):
                m.fc.weight.normal_(0, weight_std, generator=gen)
                m.fc.bias.normal_(0, 0.5, generator=gen)
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0, 0.1, generator=gen)
    return net


@pytest.mark.parametrize('name', NAMES)
def test_registered_and_defaults_build_the_paper_model(name):
    assert ARCH_REGISTRY.get(name) is getattr(cadyq_plugin.archs, name)
    net = build_network({'type': name})
    assert (net.quant_mode, net.upscale, net.n_selectors) == ('cadyq', 4, REFERENCE[name][0])
    assert net.grad_scale == (1.0 if name == 'CARN_CADyQ' else 1e3)
    selectors = [m for m in net.modules() if isinstance(m, BitSelector)]
    assert [s.index for s in selectors] == list(range(len(selectors)))
    assert all(s.bits == [4, 6, 8] for s in selectors)


@pytest.mark.parametrize('name', NAMES)
def test_default_model_starts_at_the_largest_bit_and_returns_aux(name):
    torch.manual_seed(0)
    net = ARCH_REGISTRY.get(name)().eval()
    x = torch.rand(2, 3, 11, 9)
    with torch.no_grad():
        sr, aux = net(x, return_aux=True)
    n_sel, n_feats = REFERENCE[name][:2]
    assert sr.shape == (2, 3, 44, 36)
    assert aux['body'].shape == (2, 64, 11, 9)
    assert len(aux['feats']) == n_feats and all(f.shape[0] == 2 for f in aux['feats'])
    assert aux['bits'].shape == (2, n_sel) and torch.all(aux['bits'] == 8)
    # init: equal logits but the largest candidate's (+1), so E_p[b] is the same at every selector
    expected_bit = torch.softmax(torch.tensor([0.0, 0.0, 1.0]), 0) @ torch.tensor([4.0, 6.0, 8.0])
    assert torch.allclose(aux['weighted_bits'], torch.full((2,), n_sel * 8 / float(expected_bit)), rtol=1e-5)
    with torch.no_grad():
        assert torch.equal(net(x), sr)


@pytest.mark.parametrize('name', NAMES)
def test_fp_and_pams_modes_have_no_selectors(name):
    for mode in ('fp', 'pams'):
        net = ARCH_REGISTRY.get(name)(quant_mode=mode, **SMALL[name]).eval()
        with torch.no_grad():
            _, aux = net(torch.rand(2, 3, 8, 8), return_aux=True)
        assert net.n_selectors == 0 and aux['bits'].shape == (2, 0)
        assert torch.equal(aux['weighted_bits'], torch.zeros(2))
    assert not _quantizer_prefixes(ARCH_REGISTRY.get(name)(quant_mode='fp', **SMALL[name]))


@pytest.mark.parametrize('name', NAMES)
def test_parameter_names_are_shared_across_modes_and_load_plainly(name):
    nets = {mode: ARCH_REGISTRY.get(name)(quant_mode=mode) for mode in ('fp', 'pams', 'cadyq')}
    fp_keys = _shared_keys(nets['fp'])
    assert fp_keys == dict((k, tuple(v.shape)) for k, v in nets['fp'].state_dict().items())
    assert _shared_keys(nets['pams']) == fp_keys
    assert _shared_keys(nets['cadyq']) == fp_keys

    pams_quant = _quantizer_prefixes(nets['pams'])
    result = nets['pams'].load_state_dict(nets['fp'].state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(k.startswith(pams_quant) for k in result.missing_keys)
    assert len(result.missing_keys) == len(nets['pams'].state_dict()) - len(fp_keys)

    cadyq_quant = _quantizer_prefixes(nets['cadyq'])
    selector_prefixes = tuple(f'{n}.' for n, m in nets['cadyq'].named_modules() if isinstance(m, BitSelector))
    result = nets['cadyq'].load_state_dict(nets['pams'].state_dict(), strict=False)
    assert result.missing_keys and all(k.startswith(selector_prefixes) for k in result.missing_keys)
    # what pams has and cadyq lacks: the fixed quantizers at the selector places (copied in by the model)
    assert all(k.startswith(pams_quant) and k.rsplit('.', 1)[0] + '.' in selector_prefixes
               for k in result.unexpected_keys)
    assert all(k.startswith(cadyq_quant) for k in result.missing_keys)
    for k, v in nets['fp'].state_dict().items():
        assert torch.equal(nets['cadyq'].state_dict()[k], v)


@pytest.mark.parametrize('name', NAMES)
def test_eval_is_per_sample_independent(name):
    net = _randomise(ARCH_REGISTRY.get(name)(**SMALL[name]).double().eval())
    x = _contents()
    with torch.no_grad():
        sr, aux = net(x, return_aux=True)
        assert aux['bits'].unique().numel() > 1, 'the test needs bits that vary'
        assert any(not torch.equal(aux['bits'][0], aux['bits'][i]) for i in range(1, len(x)))
        for i in range(len(x)):
            sr_i, aux_i = net(x[i:i + 1], return_aux=True)
            assert torch.equal(aux_i['bits'][0], aux['bits'][i])
            assert torch.allclose(sr_i[0], sr[i], rtol=0, atol=1e-9)
            assert torch.allclose(aux_i['body'][0], aux['body'][i], rtol=0, atol=1e-9)


@pytest.mark.parametrize('name', NAMES)
def test_training_step_reaches_selectors_alphas_and_weights(name):
    net = ARCH_REGISTRY.get(name)(**SMALL[name]).train()
    sr, aux = net(torch.rand(2, 3, 8, 8), return_aux=True)
    (sr.abs().mean() + aux['weighted_bits'].sum() * 1e-4 + aux['bits'].sum() * 1e-4).backward()
    selectors = [m for m in net.modules() if isinstance(m, BitSelector)]
    assert all(s.fc.weight.grad is not None and s.fc.weight.grad.abs().sum() > 0 for s in selectors)
    assert all(s.quantizers[-1].alpha.grad is not None for s in selectors)
    assert all(p.grad is not None for n, p in net.named_parameters() if n.endswith('conv1.weight'))


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('scale', [2, 3, 4])
def test_output_is_exactly_scale_times_the_input(name, scale):
    net = ARCH_REGISTRY.get(name)(upscale=scale, quant_mode='fp', **SMALL[name]).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 3, 7, 5)).shape == (1, 3, 7 * scale, 5 * scale)


def test_idn_tail_is_a_transposed_conv_plus_bicubic():
    net = ARCH_REGISTRY.get('IDN_CADyQ')(quant_mode='fp', **SMALL['IDN_CADyQ']).eval()
    deconv = net.deconv
    assert (deconv.kernel_size, deconv.stride, deconv.padding, deconv.output_padding) == ((17, 17), (4, 4), (8, 8),
                                                                                        (3, 3))
    with torch.no_grad():
        deconv.weight.zero_()
        deconv.bias.zero_()
        x = torch.rand(1, 3, 6, 5)
        bicubic = torch.nn.functional.interpolate(x, scale_factor=4, mode='bicubic', align_corners=False)
        assert torch.allclose(net(x), bicubic, atol=1e-5)
    groups = [m.groups for n, m in net.named_modules() if n.endswith('conv2') and 'body' in n]
    assert groups and set(groups) == {4}


def test_idn_fblock_is_fixed_8_bit_in_both_quantized_modes():
    for mode in ('pams', 'cadyq'):
        fblock = ARCH_REGISTRY.get('IDN_CADyQ')(quant_mode=mode).fblock
        assert isinstance(fblock.quant1, PAMSQuant) and fblock.quant1.bits == 8
        assert isinstance(fblock.quant2, PAMSQuant) and fblock.quant2.bits == 8
        assert fblock.conv1.w_bits == 8 and fblock.conv2.w_bits == 8


def test_srresnet_shares_one_prelu_and_batchnorm_follows_the_mode():
    net = ARCH_REGISTRY.get('SRResNet_CADyQ')(**SMALL['SRResNet_CADyQ'])
    assert all(block.act is net.act for block in net.body)
    prelus = [p for n, p in net.named_parameters() if n.endswith('act.weight')]
    assert len(prelus) == 1  # one parameter, however many names the state dict gives it
    assert net.upsample[2] is not net.act
    bn = net.body[0].bn1
    before = bn.running_mean.clone()
    net.train()(torch.rand(2, 3, 8, 8))
    assert not torch.equal(bn.running_mean, before)
    after = bn.running_mean.clone()
    with torch.no_grad():
        net.eval()(torch.rand(2, 3, 8, 8))
    assert torch.equal(bn.running_mean, after)


def test_srresnet_conv1_sees_the_unquantized_input_but_counts_bs1_bits():
    net = ARCH_REGISTRY.get('SRResNet_CADyQ')(**SMALL['SRResNet_CADyQ']).eval()
    block = net.body[0]
    seen = {}

    def hook(key):

        def record(module, inputs, output):
            seen[key] = (inputs[0], output)

        return record

    block.conv1.register_forward_hook(hook('conv1'))
    block.quant_in.register_forward_hook(hook('bs1'))
    with torch.no_grad():
        net(torch.rand(1, 3, 8, 8))
    assert seen['conv1'][0] is seen['bs1'][0] and not torch.equal(seen['bs1'][0], seen['bs1'][1])
    layers = {layer.name: layer for layer in count_layer_macs(net, 8, 8)}
    assert (layers['body.0.conv1'].act_kind, layers['body.0.conv1'].act_bits) == ('dynamic', block.quant_in.index)
    assert (layers['body.0.conv2'].act_kind, layers['body.0.conv2'].act_bits) == ('dynamic', block.quant_mid.index)


def test_carn_skip_is_full_precision_and_mean_is_on_the_unit_scale():
    net = ARCH_REGISTRY.get('CARN_CADyQ')()
    assert torch.allclose(net.mean.flatten(), torch.tensor([0.4488, 0.4371, 0.4040]))
    block = net.body[0].blocks[0]
    x = torch.randn(1, 64, 6, 6)
    record = BitRecord(image_gradient_feature(torch.rand(1, 3, 6, 6)), 1, 'cpu')
    with torch.no_grad():
        out, feat = block.eval()(x, record)
        assert torch.equal(out, torch.relu(feat + x))


@pytest.mark.parametrize('name', NAMES)
def test_bitops_at_1280x720_match_the_paper(name):
    n_sel, _, dynamic, fixed, other = REFERENCE[name]
    per_mode = {mode: count_layer_macs(ARCH_REGISTRY.get(name)(quant_mode=mode), 180, 320)
                for mode in ('fp', 'pams', 'cadyq')}

    def macs(layers, kind):
        return sum(layer.macs for layer in layers if layer.act_kind == kind) / 1e9

    fp_total = sum(layer.macs for layer in per_mode['fp']) / 1e9
    assert fp_total == pytest.approx(FP_TOTAL[name], abs=0.01)
    assert forward_bitops(per_mode['fp']) / 1e9 == pytest.approx(FP_TOTAL[name], abs=0.01)
    cadyq = per_mode['cadyq']
    assert macs(cadyq, 'dynamic') == pytest.approx(dynamic, abs=0.01)
    assert macs(cadyq, 'fixed') == pytest.approx(fixed, abs=0.01)
    assert macs(cadyq, 'fp') == pytest.approx(other, abs=0.01)
    assert len({layer.act_bits for layer in cadyq if layer.act_kind == 'dynamic'}) == n_sel
    assert all(layer.w_bits == 8 for layer in cadyq if layer.act_kind != 'fp')
    w8a8 = other + (dynamic + fixed) * (8 / 32) * (8 / 32)
    fab6 = other + dynamic * (8 / 32) * (6 / 32) + fixed * (8 / 32) * (8 / 32)
    assert forward_bitops(per_mode['pams']) / 1e9 == pytest.approx(w8a8, abs=0.01)
    assert forward_bitops(cadyq, fab=8) / 1e9 == pytest.approx(w8a8, abs=0.01)
    assert forward_bitops(cadyq, fab=6) / 1e9 == pytest.approx(fab6, abs=0.01)
    chosen = torch.full((n_sel,), 6.0)
    assert forward_bitops(cadyq, chosen) == pytest.approx(forward_bitops(cadyq, fab=6))
