"""The int8 backend (``backend: int8``): integer convolutions that reproduce the fake-quantized network."""
import copy
import os
import platform

import pytest
import torch
from int8_helpers import ARCHS, compare_layers, network_pair, photo_pair

import cadyq_plugin  # noqa: F401
from basicsr.archs import build_network  # noqa: E402  (isort: skip)
from basicsr.metrics import calculate_psnr, calculate_ssim
from basicsr.utils import tensor2img
from cadyq_plugin.archs import EDSR_CADyQ, SRResNet_CADyQ
from cadyq_plugin.config_check import ConfigError, check_options
from cadyq_plugin.convert import convert_state_dict
from cadyq_plugin.deploy import load_weights
from cadyq_plugin.inference import super_resolve
from cadyq_plugin.metrics import MACCounter, calculate_avg_bit, calculate_bitops
from cadyq_plugin.quant import QConv2d, set_backend
from cadyq_plugin.quant.int8 import Int8BackendError, QuantizedActivation, check_int8_device
from cadyq_plugin.tools.backend_benchmark import ChannelsLast

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
GOLDEN = os.path.join(DATA, 'reference', 'edsr_cadyq_golden.pt')
TRAINED_EDSR = os.path.join(DATA, 'trained', 'edsr_cadyq_quickstart_int8.pth')
PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket')


@pytest.fixture(scope='module')
def photos():
    return {name: photo_pair(name, 128) for name in PHOTOS}


def assert_rare_single_level(stats, per_layer=2e-4, overall=2e-5):
    """Level differences: at most one level, in at most ``per_layer`` of a layer's values and ``overall``."""
    values = sum(s[0] for s in stats.values())
    differing = sum(s[1] for s in stats.values())
    assert max(s[2] for s in stats.values()) <= 1, stats
    assert all(s[1] <= per_layer * s[0] for s in stats.values()), stats
    assert differing <= overall * values, (differing, values)


@pytest.mark.parametrize('mode', ['pams', 'cadyq'])
@pytest.mark.parametrize('arch', ARCHS)
def test_int8_equals_fake_layer_by_layer(arch, mode, photos):
    """A batch of four photos that chose different bits runs as one integer conv per layer; given the same input,
    every layer's levels are the fake path's except rare values on a rounding boundary (one level), and the
    output equals the fake path's to float round-off."""
    batch = torch.cat([photos[name][0] for name in PHOTOS])
    fake, int8 = network_pair(arch, mode, batch)
    fake_sr, fake_aux, int8_sr, int8_aux, stats = compare_layers(fake, int8, batch)
    assert torch.equal(int8_aux['bits'], fake_aux['bits'])
    if mode == 'cadyq':
        per_layer = [column.unique().numel() for column in fake_aux['bits'].t()]
        assert max(per_layer) > 1, 'some layer chose different bits for different samples of the batch'
    assert_rare_single_level(stats)
    assert (int8_sr - fake_sr).abs().max() * 255 < 1e-3


def trained_edsr_pair():
    """The quickstart-trained EDSR (tests/data/trained/README.md) in both backends."""
    int8 = EDSR_CADyQ(backend='int8')
    load_weights(int8, TRAINED_EDSR)
    fake = EDSR_CADyQ()
    fake.load_state_dict(int8.state_dict())
    return fake.eval(), int8.eval()


@pytest.mark.parametrize('arch', ARCHS)
def test_int8_metrics_equal_fake_on_photos(arch, photos):
    """End to end on real photos (nothing forced): the same chosen bits, so FAB and BitOPs are exact; PSNR agrees
    to 0.01 dB and SSIM to 1e-4, or, where the fake path itself moves more when only its float rounding changes
    (the same network in channels-last layout), to twice that. EDSR runs a trained network: a random-weight
    16-block EDSR amplifies a one-level difference from block to block until a selector deep in it flips."""
    if arch == 'EDSR_CADyQ':
        fake, int8 = trained_edsr_pair()
    else:
        fake, int8 = network_pair(arch, 'cadyq', torch.cat([lr for lr, _ in photos.values()]))
    fake_cl = ChannelsLast(copy.deepcopy(fake)).eval()
    counter = MACCounter(fake)
    for lr, hr in photos.values():
        for patchwise in (None, {'patch': 16, 'step': 14, 'batch': 4}):
            results = [super_resolve(net, lr, patchwise, counter) for net in (fake, int8, fake_cl)]
            for a, b in zip(results[0].forwards, results[1].forwards):
                assert torch.equal(a['bits'], b['bits'])
            assert calculate_avg_bit(results[0].forwards) == calculate_avg_bit(results[1].forwards)
            assert calculate_bitops(results[0].forwards) == calculate_bitops(results[1].forwards)
            imgs, gt = [tensor2img([r.output]) for r in results], tensor2img([hr])
            psnr = [calculate_psnr(img, gt, 4, test_y_channel=True) for img in imgs]
            ssim = [calculate_ssim(img, gt, 4, test_y_channel=True) for img in imgs]
            assert abs(psnr[1] - psnr[0]) < 0.01
            assert abs(ssim[1] - ssim[0]) < max(1e-4, 2 * abs(ssim[2] - ssim[0]))


def golden_network(golden, backend, dtype=torch.float32):
    net = EDSR_CADyQ(backend=backend)
    state_dict, _ = convert_state_dict(golden['state_dict'], net, 'EDSR_CADyQ', 'cadyq', 4)
    net.load_state_dict(state_dict)
    return net.eval().to(dtype)


def test_int8_reproduces_the_golden_vectors():
    """Every selector bit of the original implementation; the SR output within what float rounding alone moves
    it: the golden network has random weights, so a level that lands one step apart is amplified from layer to
    layer, and the fake path evaluated in float64 deviates from the (float32) golden output as much (on average a
    little less: the blocks' 8-bit residual quantizer reads its codes from the oneDNN convolution's requantization,
    whose float arithmetic is oneDNN's, so a few more values land one level apart)."""
    golden = torch.load(GOLDEN, weights_only=True)
    x = golden['input_0_255'] / 255.0
    fake, int8 = golden_network(golden, 'fake'), golden_network(golden, 'int8')
    fake_sr, _, forced_sr, forced_aux, stats = compare_layers(fake, int8, x)
    assert torch.equal(forced_aux['bits'], golden['selector_bits'].float())
    assert_rare_single_level(stats)
    assert (forced_sr - fake_sr).abs().max() * 255 < 1e-3
    with torch.no_grad():
        sr, aux = int8(x, return_aux=True)
        sr64 = golden_network(golden, 'fake', torch.float64)(x.double())
    assert torch.equal(aux['bits'], golden['selector_bits'].float())
    deviation = (sr * 255 - golden['sr_0_255']).abs()
    deviation64 = (sr64 * 255 - golden['sr_0_255'].double()).abs()
    assert deviation.max() <= 1.05 * deviation64.max() and deviation.mean() <= 1.25 * deviation64.mean()


def test_train_mode_is_fake_and_eval_follows_weight_changes():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 12, 12)
    fake, int8 = EDSR_CADyQ(num_block=2), EDSR_CADyQ(num_block=2, backend='int8')
    int8.load_state_dict(fake.state_dict())
    fake.train(), int8.train()
    assert torch.equal(fake(x), int8(x)), 'training runs the fake path'
    quantized = []
    hook = int8.body[0].conv2.register_forward_pre_hook(lambda m, args: quantized.append(type(args[0])))
    fake.eval(), int8.eval()
    with torch.no_grad():
        before = int8(x)
        assert quantized == [QuantizedActivation]
        assert (before - fake(x)).abs().max() < 1e-4
        for net in (fake, int8):  # an in-place change (what an optimizer step does) invalidates the packed weights
            net.body[0].conv1.weight.mul_(-1.5)
        assert (int8(x) - fake(x)).abs().max() < 1e-4 and not torch.allclose(int8(x), before)
        int8.load_state_dict(EDSR_CADyQ(num_block=2).state_dict())
        fake.load_state_dict(int8.state_dict())
        assert (int8(x) - fake(x)).abs().max() < 1e-4
        expected = int8(x)
    assert torch.equal(int8(x), expected), 'an eval forward with autograd enabled (no torch.no_grad) runs too'
    hook.remove()
    int8.train()
    assert all(m.int8_kernel._weight is None for m in int8.modules() if isinstance(m, QConv2d))


def test_srresnet_conv1_sees_the_unquantized_input_in_fp32():
    """SRResNet's conv1 reads the block input before BS1 (reference quirk): it stays an FP32 conv on the
    quantized weight (the fake path's arithmetic, in the int8 backend's channels-last layout)."""
    torch.manual_seed(0)
    fake, int8 = SRResNet_CADyQ(num_block=1).eval(), SRResNet_CADyQ(num_block=1, backend='int8').eval()
    int8.load_state_dict(fake.state_dict())
    outputs, x = {}, torch.rand(1, 3, 10, 10)
    for name, net in (('fake', fake), ('int8', int8)):
        net.body[0].conv1.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, (i[0], o)))
        with torch.no_grad():
            net(x)
    assert not isinstance(outputs['int8'][0], QuantizedActivation)
    assert torch.equal(outputs['int8'][0], outputs['fake'][0])
    assert torch.allclose(outputs['int8'][1], outputs['fake'][1], rtol=1e-5, atol=1e-4)


def test_backend_argument_is_checked():
    with pytest.raises(ValueError, match="backend must be 'fake' or 'int8', got 'int4'"):
        EDSR_CADyQ(num_block=1, backend='int4')
    with pytest.raises(ValueError, match="backend 'int8' needs quant_mode 'pams' or 'cadyq'"):
        EDSR_CADyQ(num_block=1, quant_mode='fp', backend='int8')
    with pytest.raises(ValueError, match='must be <= 8'):
        EDSR_CADyQ(num_block=1, quant_mode='pams', a_bits=16, backend='int8')
    with pytest.raises(ConfigError, match=r"network_g.backend = 'int4': expected 'fake' or 'int8'"):
        check_options({'network_g': {'type': 'EDSR_CADyQ', 'backend': 'int4'}}, 'x.yml', phase='test',
                      check_files=False)


def test_int8_refuses_devices_without_the_integer_conv(monkeypatch):
    with pytest.raises(Int8BackendError, match='x86 CPUs only.*use backend fake on cuda'):
        check_int8_device(torch.device('cuda', 0))
    monkeypatch.setattr(platform, 'machine', lambda: 'aarch64')
    with pytest.raises(Int8BackendError, match='needs an x86 CPU.*aarch64'):
        check_int8_device(torch.device('cpu'))


def test_bitops_and_generic_modules_of_an_int8_network():
    """MAC counting (a shape-only copy on 'meta') works on an int8 network; set_backend works on any module
    graph of QConv2d + quantizers, not just the backbones."""
    int8 = build_network({'type': 'IDN_CADyQ', 'backend': 'int8'})
    fake = build_network({'type': 'IDN_CADyQ'})
    assert MACCounter(int8)(20, 30) == MACCounter(fake)(20, 30)
    from cadyq_plugin.quant import BitRecord, PAMSQuant
    quant = PAMSQuant(6)
    conv = QConv2d(5, 7, 3, padding=1, groups=1).feed_from(quant)
    net = torch.nn.Sequential(quant, conv).eval()
    x = torch.randn(2, 5, 6, 6) * 8
    with torch.no_grad():
        reference = conv(quant(x, BitRecord(None, 2, 'cpu')))
        set_backend(net, 'int8')
        assert (conv(quant(x, BitRecord(None, 2, 'cpu'))) - reference).abs().max() < 1e-5
        set_backend(net, 'fake')
        assert conv.int8_kernel is None and quant.int8_codes is None


@pytest.mark.parametrize('backbone', [
    {'type': 'MSRResNet', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 16, 'num_block': 2, 'upscale': 4},
    {'type': 'RCAN', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 16, 'num_group': 1, 'num_block': 2,
     'squeeze_factor': 4, 'upscale': 4},
])
def test_the_wrapper_runs_the_int8_backend_too(backbone, photos):
    """A CADyQWrapper network (any BasicSR arch) gets the same integer execution: its quantized convs run as
    oneDNN integer convolutions and reproduce the fake path as the hand-written archs do."""
    batch = torch.cat([photos[name][0] for name in PHOTOS])
    fake, int8 = network_pair('CADyQWrapper', 'cadyq', batch, backbone=backbone)
    assert all(m.int8_kernel is not None for m in int8.modules() if isinstance(m, QConv2d))
    fake_sr, fake_aux, int8_sr, int8_aux, stats = compare_layers(fake, int8, batch)
    assert torch.equal(int8_aux['bits'], fake_aux['bits'])
    assert_rare_single_level(stats)
    assert (int8_sr - fake_sr).abs().max() * 255 < 1e-3
