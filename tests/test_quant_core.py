"""The quantization core against docs/method.md#quantizers, docs/method.md#bit-selector: worked numbers, autograd of the explicit formulas, selection."""
import pytest
import torch

from cadyq_plugin.quant import (BitRecord, BitSelector, PAMSQuant, QConv2d, check_candidate_bits,
                                image_gradient_feature, levels, quantize_weight, set_calibration)


def explicit_pams(x, alpha, q, clip=True):
    """docs/method.md#quantizers written with plain autograd ops and a straight-through round (the second code path)."""
    c = torch.clamp(x, -alpha, alpha) if clip else x
    u = c / alpha * q
    return (u + (torch.round(u) - u).detach()) / q * alpha


@pytest.mark.parametrize('bits,expected', [(4, 7), (6, 31), (8, 127), (2, 1)])
def test_levels(bits, expected):
    assert levels(bits) == expected


def test_weight_quantizer_worked_example():
    w = torch.tensor([1.0, -0.5, 0.26, 0.0])
    m = 1.0 + 1e-8
    # 2 bits -> q = 1: levels {-m, 0, m}
    assert torch.allclose(quantize_weight(w, 2), torch.tensor([m, -0.0, 0.0, 0.0]))
    # 8 bits -> q = 127
    expected = torch.round(w * 127 / m) * m / 127
    assert torch.equal(quantize_weight(w, 8), expected)
    assert quantize_weight(w, 8).unique().numel() <= 255


def test_weight_quantizer_gradient_is_straight_through():
    w = torch.randn(8, requires_grad=True)
    quantize_weight(w, 4).sum().backward()
    assert torch.allclose(w.grad, torch.ones(8))


def test_qconv_uses_quantized_weight_and_fp_bias():
    conv = QConv2d(3, 4, 3, padding=1, w_bits=4)
    x = torch.randn(2, 3, 5, 5)
    expected = torch.nn.functional.conv2d(x, quantize_weight(conv.weight, 4), conv.bias, padding=1)
    assert torch.equal(conv(x), expected)
    assert set(conv.state_dict()) == {'weight', 'bias'}


def test_pams_clip_worked_example():
    quant = PAMSQuant(bits=4)  # q = 7
    quant.alpha.data.fill_(2.0)
    x = torch.tensor([-3.0, -1.0, 0.1, 0.2, 1.0, 5.0]).view(1, 1, 2, 3)
    # clamp to [-2, 2], then round(c / 2 * 7) / 7 * 2 (round half to even: -3.5 -> -4, 3.5 -> 4)
    expected = torch.tensor([-7, -4, 0, 1, 4, 7]).float() * 2 / 7
    assert torch.allclose(quant(x).flatten(), expected)


@pytest.mark.parametrize('clip', [True, False])
@pytest.mark.parametrize('bits', [2, 4, 8])
def test_pams_gradients_match_autograd_of_the_formula(clip, bits):
    torch.manual_seed(bits)
    x = (torch.randn(3, 4, 5, 5) * 2).requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    quant = PAMSQuant(bits)
    quant.alpha.data.fill_(1.3)
    alpha2 = quant.alpha.detach().clone().requires_grad_()
    weight = torch.randn_like(x)
    from cadyq_plugin.quant import pams_quantize
    y = pams_quantize(x, quant.alpha, quant.q, clip)
    y2 = explicit_pams(x2, alpha2, float(levels(bits)), clip)
    assert torch.equal(y, y2)
    (y * weight).sum().backward()
    (y2 * weight).sum().backward()
    assert torch.allclose(x.grad, x2.grad)
    assert torch.allclose(quant.alpha.grad, alpha2.grad, rtol=1e-4, atol=1e-4)


def test_pams_calibration_sets_alpha_to_batch_mean_of_sample_max():
    quant = PAMSQuant(bits=8).train()
    x = torch.zeros(2, 1, 2, 2)
    x[0, 0, 0, 0] = 3.0
    x[1, 0, 1, 1] = -5.0
    quant.calibrating = True
    y = quant(x)
    assert quant.max_val.item() == pytest.approx(4.0)
    assert quant.alpha.item() == pytest.approx(4.0)
    # no clipping during calibration: -5 survives (levels beyond q)
    assert y[1, 0, 1, 1].item() == pytest.approx(round(-5 / 4 * 127) / 127 * 4)
    # eval never calibrates
    quant.eval()
    quant(x * 10)
    assert quant.alpha.item() == pytest.approx(4.0)


def test_set_calibration_reaches_every_quantizer():
    selector = BitSelector(4)
    net = torch.nn.ModuleList([PAMSQuant(8), selector])
    set_calibration(net, True)
    assert net[0].calibrating and selector.calibrating


def test_image_gradient_feature_worked_example():
    # a horizontal ramp: gray value = 0.1 * column; Sobel d/dx with /8 gives 0.1 inside, 0.05 at the
    # replicate-padded border columns; d/dy is 0 everywhere
    cols = torch.arange(6, dtype=torch.float32) * 0.1
    img = cols.view(1, 1, 1, 6).expand(1, 3, 4, 6).clone()
    g = image_gradient_feature(img, grad_scale=10.0)
    expected_dx = (4 * 0.1 + 2 * 0.05) / 6 * 10.0
    assert g.shape == (1, 2)
    assert g[0, 0].item() == pytest.approx(expected_dx, rel=1e-5)
    assert g[0, 1].item() == pytest.approx(0.0, abs=1e-7)


def test_image_gradient_feature_uses_bt601_gray():
    img = torch.zeros(1, 3, 3, 3)
    img[0, 1, :, 2] = 1.0  # green step at the last column
    g = image_gradient_feature(img)
    # d/dx at the middle column: (1+2+1)/8 * 0.587; at the last column replicate -> same; first column 0
    assert g[0, 0].item() == pytest.approx(0.587 * 0.5 * 2 / 3, rel=1e-5)


@pytest.mark.parametrize('bits', [[4, 8], [2, 4, 6], [2, 3, 5, 8]])
def test_selector_initialises_every_input_at_the_largest_bit(bits):
    selector = BitSelector(8, bits).eval()
    selector.index = 0
    x = torch.randn(5, 8, 6, 6) * torch.arange(1, 6).view(5, 1, 1, 1)
    record = BitRecord(image_gradient_feature(torch.rand(5, 3, 6, 6)), 5, 'cpu')
    selector(x, record)
    assert torch.equal(record.bits(), torch.full((5, 1), float(bits[-1])))
    assert selector.fc.weight.eq(1).all() and selector.fc.bias.tolist() == [0.0] * (len(bits) - 1) + [1.0]


@pytest.mark.parametrize('bad', [[8], [8, 4], [4, 4, 8], [1, 4], [4, 9], [4.0, 8], 'x', [4, True]])
def test_candidate_bits_are_validated(bad):
    with pytest.raises(ValueError, match='candidate bits'):
        check_candidate_bits(bad)


def _random_selector(channels, bits, seed):
    torch.manual_seed(seed)
    selector = BitSelector(channels, bits)
    selector.index = 0
    with torch.no_grad():
        selector.fc.weight.normal_(0, 2.0)
        selector.fc.bias.normal_(0, 1.0)
        for quantizer in selector.quantizers:
            quantizer.alpha.uniform_(0.5, 3.0)
    return selector


@pytest.mark.parametrize('bits', [[4, 8], [4, 6, 8], [2, 4, 6, 8]])
def test_selector_forward_hard_and_gradient_soft(bits):
    """Forward = the chosen candidate per sample; gradient = that of sum_k p_k Q_k(x) (docs/method.md#bit-selector), against autograd
    of the explicit mixture in float64. Inputs at odd multiples of 1/64 and power-of-two ranges make
    ``x / alpha * q`` exact in both precisions (and no input sits on a range, where autograd splits the gradient), so both round every value alike; the float64 mixture is the exact gradient, which
    the float32 selector must reproduce (a float32 mixture would not: its selector gradients are differences of
    nearly equal sums)."""
    selector = _random_selector(6, bits, seed=len(bits)).train()
    gen = torch.Generator().manual_seed(len(bits))
    with torch.no_grad():
        for quantizer in selector.quantizers:
            quantizer.alpha.fill_(2.0**torch.randint(-1, 3, (), generator=gen).item())
    x = ((2 * torch.randint(-96, 96, (4, 6, 5, 5), generator=gen) + 1) / 64).requires_grad_()  # never +-alpha
    feature = torch.rand(4, 2)
    record = BitRecord(feature, 4, feature.device)
    y = selector(x, record)

    # second code path: explicit mixture with autograd (forward in float32, gradient in float64)
    sigma = x.detach().flatten(2).std(dim=2)
    choice = torch.nn.functional.linear(torch.cat([feature, sigma], 1), selector.fc.weight, selector.fc.bias).argmax(1)
    outs = torch.stack([explicit_pams(x.detach(), q.alpha.detach(), float(levels(b)))
                        for q, b in zip(selector.quantizers, bits)], 1)
    assert torch.equal(y, outs[torch.arange(4), choice])
    assert torch.equal(record.bits()[:, 0], torch.tensor(bits, dtype=torch.float32)[choice])

    x2 = x.detach().double().requires_grad_()
    alphas = [q.alpha.detach().double().requires_grad_() for q in selector.quantizers]
    weight = selector.fc.weight.detach().double().requires_grad_()
    bias = selector.fc.bias.detach().double().requires_grad_()
    probs = torch.softmax(torch.nn.functional.linear(torch.cat([feature, sigma], 1).double(), weight, bias), 1)
    outs = torch.stack([explicit_pams(x2, a, float(levels(b))) for a, b in zip(alphas, bits)], 1)
    soft = (probs.view(4, -1, 1, 1, 1) * outs).sum(1)
    g = torch.randn_like(y)
    expected_bits = probs @ torch.tensor(bits, dtype=torch.float64)
    ((y * g).sum() + record.bits().sum() * 0.3).backward()
    ((soft * g.double()).sum() + expected_bits.sum() * 0.3).backward()
    assert torch.allclose(x.grad.double(), x2.grad, atol=1e-5)
    for quantizer, alpha in zip(selector.quantizers, alphas):
        assert torch.allclose(quantizer.alpha.grad.double(), alpha.grad, rtol=1e-4, atol=1e-6)
    # float32 softmax backward where p_k ~ 1 (the bit term's gradient is large): round-off of order 1e-6
    assert torch.allclose(selector.fc.weight.grad.double(), weight.grad, rtol=1e-4, atol=1e-5)
    assert torch.allclose(selector.fc.bias.grad.double(), bias.grad, rtol=1e-4, atol=1e-5)


def test_weighted_bits_gradient_is_relative():
    """weighted_bits = b / E_p[b].detach(): its gradient is dE_p[b] / E_p[b]."""
    selector = _random_selector(3, [4, 6, 8], seed=3).train()
    x = torch.randn(2, 3, 4, 4)
    record = BitRecord(torch.rand(2, 2), 2, 'cpu')
    selector(x, record)
    chosen, weighted = record.bits()[:, 0], record.weighted_bits()
    weight = selector.fc.weight.detach().clone().requires_grad_()
    probs = torch.softmax(
        torch.nn.functional.linear(torch.cat([record.image_feature, x.flatten(2).std(2)], 1), weight,
                                   selector.fc.bias.detach()), 1)
    expected = probs @ selector.bit_values
    assert torch.allclose(weighted.detach(), chosen.detach() / expected.detach())
    weighted.sum().backward()
    (expected / expected.detach()).sum().backward()
    assert torch.allclose(selector.fc.weight.grad, weight.grad, atol=1e-7)


def test_selector_eval_output_equals_training_output_and_samples_are_independent():
    selector = _random_selector(6, [4, 6, 8], seed=7)
    x = torch.randn(6, 6, 7, 7) * torch.linspace(0.2, 3, 6).view(6, 1, 1, 1)
    feature = torch.rand(6, 2) * 3
    outs = {}
    for mode in ('train', 'eval'):
        getattr(selector, mode)()
        record = BitRecord(feature, 6, feature.device)
        outs[mode] = (selector(x, record).detach(), record.bits())
    assert torch.equal(outs['train'][0], outs['eval'][0])
    assert torch.equal(outs['train'][1], outs['eval'][1])
    assert outs['eval'][1].unique().numel() > 1, 'the random selector should choose several bit-widths'
    for i in range(6):
        record = BitRecord(feature[i:i + 1], 1, feature.device)
        alone = selector(x[i:i + 1], record)
        assert torch.equal(alone[0], outs['eval'][0][i])
        assert torch.equal(record.bits()[0], outs['eval'][1][i])


def test_record_rejects_out_of_order_selectors():
    record = BitRecord(torch.zeros(1, 2), 1, 'cpu')
    with pytest.raises(RuntimeError, match='out of order'):
        record.add(1, torch.zeros(1, dtype=torch.long), torch.ones(1, 2) / 2, torch.tensor([4.0, 8.0]))
