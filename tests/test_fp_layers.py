"""``fp_layer_bits``: the convs CADyQ leaves in full precision, quantized at 8 bits (weights and a PAMS range of
their own on the input), in every backbone and the wrapper; stage loading, BitOPs, calibration, the options
check, and the int8 backend's integer execution of them (requantization fused into the conv, transposed conv as a
sub-pixel integer conv)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from int8_helpers import compare_layers, network_pair, photo_pair

import cadyq_plugin  # noqa: F401
from basicsr.archs import build_network  # noqa: E402  (isort: skip)
from cadyq_plugin.checkpoint import CheckpointError
from cadyq_plugin.config_check import ConfigError, check_options
from cadyq_plugin.deploy import calibrate_fp_layers, fp_layer_range_keys, load_weights, save_int8_checkpoint
from cadyq_plugin.metrics import count_layer_macs, forward_bitops
from cadyq_plugin.models.stage_loading import load_stage_weights
from cadyq_plugin.quant import PAMSQuant, set_backend, set_calibration
from cadyq_plugin.quant.fp_layers import QUANTIZED_FP_LAYERS, InputQuantConvTranspose2d
from cadyq_plugin.quant.weight_quant import QConvTranspose2d, WeightQuantized

TINY = {
    'EDSR_CADyQ': {'num_block': 2, 'num_feat': 16},
    'CARN_CADyQ': {'num_block': 1, 'num_res_block': 2, 'num_feat': 16},
    'IDN_CADyQ': {'num_block': 1},
    'SRResNet_CADyQ': {'num_block': 2, 'num_feat': 16},
}
# the convs each backbone keeps in FP (the reference), which fp_layer_bits quantizes; SRResNet's conv1 sees its
# block's unquantized input and gets an input quantizer of its own too
FP_LAYERS = {
    'EDSR_CADyQ': {'conv_first', 'conv_after_body', 'upsample.0', 'upsample.2', 'conv_last'},
    'CARN_CADyQ': {'conv_first', 'body.0.fusions.0', 'body.0.fusions.1', 'fusions.0', 'upsample.0', 'upsample.3',
                   'conv_last'},
    'IDN_CADyQ': {'body.0.compress', 'deconv'},
    'SRResNet_CADyQ': {'conv_first', 'body.0.conv1', 'body.1.conv1', 'conv_after_body', 'upsample.0', 'upsample.3',
                       'conv_last'},
}


@pytest.fixture(scope='module')
def lr():
    return torch.cat([photo_pair(name, 64)[0] for name in ('astronaut', 'coffee', 'chelsea', 'rocket')])


def quantized_input_convs(net):
    return {name for name, m in net.named_modules() if isinstance(m, WeightQuantized) and
            isinstance(getattr(m, 'quant_in', None), PAMSQuant)}


@pytest.mark.parametrize('arch', sorted(TINY))
def test_every_fp_conv_gets_8_bit_weights_and_an_input_range(arch):
    reference = build_network({'type': arch, **TINY[arch]})
    net = build_network({'type': arch, 'fp_layer_bits': 8, **TINY[arch]})
    assert quantized_input_convs(net) == FP_LAYERS[arch]
    assert not any(type(m) in (nn.Conv2d, nn.ConvTranspose2d) for m in net.modules())
    for name in FP_LAYERS[arch]:
        conv = net.get_submodule(name)
        assert conv.w_bits == 8 and conv.quant_in.bits == 8 and conv.input_quantizer is conv.quant_in
    # the same parameters under the same names, plus each FP layer's range
    assert set(net.state_dict()) - set(reference.state_dict()) == fp_layer_range_keys(net)
    assert set(reference.state_dict()) <= set(net.state_dict())
    # the reference network is unchanged by default, and fp mode has nothing to quantize
    assert not quantized_input_convs(reference) - {'body.0.conv1', 'body.1.conv1'}
    fp = build_network({'type': arch, 'quant_mode': 'fp', 'fp_layer_bits': 8, **TINY[arch]})
    assert set(fp.state_dict()) == set(build_network({'type': arch, 'quant_mode': 'fp', **TINY[arch]}).state_dict())


def test_training_quantizes_fp_layer_weights_per_channel_and_the_others_per_tensor():
    """In a training forward the per-tensor weights are quantized together (one multi-tensor computation); the
    8-bit FP layers keep a scale per output channel: each conv sees what ``quantize_weight`` gives it alone."""
    from cadyq_plugin.quant.weight_quant import quantize_weight, weights_quantized_together
    net = build_network({'type': 'EDSR_CADyQ', 'fp_layer_bits': 8, **TINY['EDSR_CADyQ']}).train()
    convs = {name: m for name, m in net.named_modules() if isinstance(m, WeightQuantized)}
    with weights_quantized_together(net.modules()):
        for name, conv in convs.items():
            expected = quantize_weight(conv.weight, conv.w_bits, conv.w_channel_dim)
            assert torch.equal(conv.quantized_weight(), expected), name
            assert (conv.prequantized is None) == (name in FP_LAYERS['EDSR_CADyQ']), name
    per_channel = net.get_submodule(sorted(FP_LAYERS['EDSR_CADyQ'])[0])
    assert not torch.equal(per_channel.quantized_weight(), quantize_weight(per_channel.weight, 8))


def test_fp_layer_bits_is_checked():
    with pytest.raises(ValueError, match='fp_layer_bits must be null'):
        build_network({'type': 'EDSR_CADyQ', 'fp_layer_bits': 16, **TINY['EDSR_CADyQ']})
    with pytest.raises(ConfigError, match=r"network_g.fp_layer_bits = 'eight': expected null .* or an integer in "
                       r'2..8'):
        check_options({'network_g': {'type': 'EDSR_CADyQ', 'fp_layer_bits': 'eight'}}, 'x.yml', phase='test',
                      check_files=False)


def test_a_reference_checkpoint_loads_with_the_ranges_left_to_calibration(lr):
    """Stage loading: a PAMS checkpoint of the reference network into a CADyQ network with 8-bit FP layers; only
    the FP layers' ranges are missing (they start from their initial value and calibrate)."""
    pams = build_network({'type': 'EDSR_CADyQ', 'quant_mode': 'pams', **TINY['EDSR_CADyQ']})
    full = build_network({'type': 'EDSR_CADyQ', 'fp_layer_bits': 8, **TINY['EDSR_CADyQ']})
    initial = load_stage_weights(full, pams.state_dict(), 'the PAMS checkpoint')
    selector_fcs = {k for k in full.state_dict() if '.fc.' in k}
    assert set(initial) == fp_layer_range_keys(full) | selector_fcs
    assert torch.equal(full.conv_first.weight, pams.conv_first.weight)
    with torch.no_grad():
        set_calibration(full, True)
        full.train()(lr)
        set_calibration(full, False)
    assert float(full.conv_last.quant_in.alpha) != 10.0  # calibrated like every other range


def test_bitops_count_the_fp_layers_at_8_by_8_and_the_fab_only_selectors(lr):
    reference = build_network({'type': 'CARN_CADyQ', **TINY['CARN_CADyQ']})
    full = build_network({'type': 'CARN_CADyQ', 'fp_layer_bits': 8, **TINY['CARN_CADyQ']})
    ref_layers, full_layers = count_layer_macs(reference, 12, 16), count_layer_macs(full, 12, 16)
    fp_macs = sum(layer.macs for layer in ref_layers if layer.act_kind == 'fp')
    assert fp_macs > 0 and all(layer.act_kind != 'fp' for layer in full_layers)
    for fab in (4.0, 6.5, 8.0):  # BitOPs = MACs * w/32 * a/32: the FP layers' full cost becomes (8/32)^2 of it
        expected = forward_bitops(ref_layers, fab=fab) - fp_macs + fp_macs * (8 / 32)**2
        assert forward_bitops(full_layers, fab=fab) == pytest.approx(expected, rel=1e-12)
    with torch.no_grad():
        set_calibration(full, True)
        _, aux = full.train()(lr, return_aux=True)
    assert aux['bits'].shape[1] == reference.n_selectors  # the FAB averages the selectors only


def test_post_training_calibration_sets_the_mean_of_the_per_image_maximum(lr):
    _, net = network_pair('EDSR_CADyQ', 'cadyq', lr, fp_layer_bits=8, **TINY['EDSR_CADyQ'])
    seen = {}
    hooks = [conv.register_forward_pre_hook(
        lambda module, args, name=name: seen.setdefault(name, []).append(float(args[0].abs().max())))
        for name, conv in net.named_modules() if isinstance(conv, QUANTIZED_FP_LAYERS)]
    before = {k: v.clone() for k, v in net.state_dict().items() if k not in fp_layer_range_keys(net)}
    images = [image[None] for image in lr[:3]]
    assert calibrate_fp_layers(net, images) == 3
    for hook in hooks:
        hook.remove()
    for name, maxima in seen.items():
        assert float(net.get_submodule(name).quant_in.alpha) == pytest.approx(sum(maxima) / 3, rel=1e-6)
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # nothing else changed
    assert not net.training and net.conv_first.int8_kernel is not None  # back to eval and the int8 backend


@pytest.mark.parametrize('mode', ['pams', 'cadyq'])
@pytest.mark.parametrize('arch', sorted(TINY))
def test_int8_equals_fake_layer_by_layer_with_8_bit_fp_layers(arch, mode, lr):
    """As for the reference layout: given the same input, every quantizer's levels are the fake path's except rare
    values on a rounding boundary (one level), the chosen bits are the same, and the output agrees to float
    round-off, although the FP layers now run as integer convs writing the next quantizer's codes."""
    fake, int8 = network_pair(arch, mode, lr, fp_layer_bits=8, **TINY[arch])
    fake_sr, fake_aux, int8_sr, int8_aux, stats = compare_layers(fake, int8, lr)
    assert {name.rpartition('.')[0] for name in stats if name.endswith('quant_in')} >= FP_LAYERS[arch]
    assert torch.equal(int8_aux['bits'], fake_aux['bits'])
    values = sum(s[0] for s in stats.values())
    assert max(s[2] for s in stats.values()) <= 1 and sum(s[1] for s in stats.values()) <= 2e-5 * values
    assert (int8_sr - fake_sr).abs().max() * 255 < 1e-3


def test_the_transposed_conv_runs_as_a_sub_pixel_integer_conv():
    """IDN's tail (kernel 17, stride 4, padding 8, output padding 3) as an integer conv + pixel shuffle equals
    PyTorch's transposed convolution of the same integers exactly (float64 reference)."""
    torch.manual_seed(0)
    for stride, kernel, padding, extra in ((4, 17, 8, 3), (2, 4, 1, 0), (3, 9, 4, 2)):
        deconv = InputQuantConvTranspose2d(6, 3, kernel, stride=stride, padding=padding, output_padding=extra)
        deconv.quant_in.alpha.data.fill_(1.0)
        set_backend(deconv, 'int8')
        deconv.eval()
        x = torch.randn(2, 6, 5, 7).clamp(-1, 1).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            out = deconv(x)
            levels = torch.round(x * 127)
            expected = F.conv_transpose2d(levels.double() / 127, deconv.int8_kernel.weight(deconv).float_weight()
                                          .double(), deconv.bias.double(), stride, padding, extra)
        assert deconv.int8_kernel.weight(deconv).integer is not None  # the integer path, not a float fallback
        assert out.shape == (2, 3, 5 * stride, 7 * stride)
        assert torch.allclose(out.double(), expected, atol=1e-5, rtol=1e-6)
    unusual = QConvTranspose2d(4, 2, 3, stride=2, padding=0)  # output 2H + 1: no sub-pixel form, runs in float
    set_backend(unusual, 'int8')
    assert unusual.eval().int8_kernel.weight(unusual).integer is None


def test_the_int8_checkpoint_stores_the_fp_layers_as_levels(lr, tmp_path):
    """The whole int8 checkpoint of a full-integer network is near a quarter of the float one; it reloads into the
    int8 backend and computes what the network computed."""
    arch = 'IDN_CADyQ'
    _, int8 = network_pair(arch, 'cadyq', lr, fp_layer_bits=8)
    float_path, int8_path = tmp_path / 'float.pth', tmp_path / 'int8.pth'
    torch.save({'params': int8.state_dict()}, float_path)
    save_int8_checkpoint(int8, int8_path)
    stored = torch.load(int8_path, weights_only=True)['params_int8']
    assert stored['deconv.weight_levels'].dtype == torch.int8 and 'deconv.weight' not in stored
    assert int8_path.stat().st_size < 0.3 * float_path.stat().st_size
    loaded = network_pair(arch, 'cadyq', lr, seed=1, fp_layer_bits=8)[1]
    assert load_weights(loaded, str(int8_path)) == 'int8'
    with torch.no_grad():
        assert torch.equal(int8(lr), loaded(lr))
    reference = network_pair(arch, 'cadyq', lr)[1]
    with pytest.raises(CheckpointError, match='build the network with its fp_layer_bits'):
        load_weights(reference, str(int8_path))
    with pytest.raises(CheckpointError, match='--calibrate FOLDER'):
        torch.save({'params': reference.state_dict()}, float_path)
        load_weights(loaded, str(float_path))


def test_the_wrapper_quantizes_its_fp_convs_like_the_hand_written_arch(lr):
    backbone = {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_feat': 16, 'num_block': 2, 'upscale': 4}
    wrapped = build_network({'type': 'CADyQWrapper', 'backbone': backbone, 'fp_layer_bits': 8})
    edsr = build_network({'type': 'EDSR_CADyQ', 'fp_layer_bits': 8, **TINY['EDSR_CADyQ']})
    assert quantized_input_convs(wrapped) == FP_LAYERS['EDSR_CADyQ']
    assert set(wrapped.state_dict()) == set(edsr.state_dict())
    kept = build_network({'type': 'CADyQWrapper', 'backbone': backbone, 'fp_layer_bits': 8,
                          'keep_fp': ['upsample']})
    assert quantized_input_convs(kept) == {'conv_first', 'conv_after_body', 'conv_last'}
    from cadyq_plugin.archs.wrapper_arch import WrapperConfigError
    with pytest.raises(WrapperConfigError, match='conv_last is a conv that fp_layer_bits quantizes'):
        build_network({'type': 'CADyQWrapper', 'backbone': backbone, 'fp_layer_bits': 8,
                       'quantize': ['body.*.conv1', 'body.*.conv2'], 'act_quant': ['body.*.conv1', 'body.*.conv2',
                                                                                  'conv_last']})


def test_post_training_8_bit_fp_layers_cost_the_trained_network_under_a_tenth_of_a_db():
    """The tests' trained EDSR (tests/data/trained/README.md), its FP layers calibrated after training on its
    training photos, on held-out photos: PSNR within 0.1 dB of the reference network; the fake and int8 paths of
    the full-integer network choose the same bits and agree to 0.01 dB."""
    import os

    from cadyq_plugin.tools.int8_accuracy import (build, evaluate, float_state_dict, held_out_photo,
                                                  post_training)
    trained = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'trained',
                           'edsr_cadyq_quickstart_int8.pth')
    torch.set_grad_enabled(False)
    try:
        reference = float_state_dict('EDSR_CADyQ', 'cadyq', None, trained)
        photos = [held_out_photo(name, 128, 4) for name in ('motorcycle_left', 'hubble_deep_field', 'retina',
                                                            'camera')]
        calibration = [held_out_photo(name, 256, 4)[1] for name in ('astronaut', 'coffee', 'chelsea', 'rocket',
                                                                    'immunohistochemistry')]
        full = post_training('EDSR_CADyQ', 'cadyq', reference, calibration)
        ref_psnr, _, ref_fab = evaluate(build('EDSR_CADyQ', 'cadyq', 'fake', None, reference), photos)
        fake, int8 = (build('EDSR_CADyQ', 'cadyq', backend, 8, full) for backend in ('fake', 'int8'))
        (fake_psnr, fake_ssim, fake_fab), (int8_psnr, int8_ssim, int8_fab) = evaluate(fake, photos), evaluate(int8,
                                                                                                              photos)
        for _, lr in photos:
            assert torch.equal(fake(lr, return_aux=True)[1]['bits'], int8(lr, return_aux=True)[1]['bits'])
    finally:
        torch.set_grad_enabled(True)
    assert int8_psnr > ref_psnr - 0.1 and fake_psnr > ref_psnr - 0.1
    assert abs(int8_psnr - fake_psnr) < 0.01 and abs(int8_ssim - fake_ssim) < 1e-3
    # the same choices in both backends; against the reference, the quantized head moves a few selectors' inputs
    assert int8_fab == fake_fab and abs(int8_fab - ref_fab) < 0.1


def test_the_image_wise_onnx_graph_requantizes_in_qlinear_convs(lr, tmp_path):
    """``basicsr export --onnx --qlinear``: a batch-1 graph whose convs feeding a fixed quantizer (EDSR's upsampler;
    CARN's ReLU in between) are QLinearConv; onnxruntime chooses the same bits as the int8 backend and its output
    agrees to float round-off (a bias rounded to int32 at the input x weight scale)."""
    import onnx
    import onnxruntime
    for arch, expected in (('EDSR_CADyQ', 2), ('CARN_CADyQ', 3)):
        _, int8 = network_pair(arch, 'cadyq', lr, fp_layer_bits=8, **TINY[arch])
        path = str(tmp_path / f'{arch}.onnx')
        from cadyq_plugin.deploy import export_onnx
        assert export_onnx(int8, path, example=lr, qlinear=True) == expected
        ops = [node.op_type for node in onnx.load(path).graph.node]
        assert ops.count('QLinearConv') == expected and 'ConvInteger' in ops
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])
        image = photo_pair('coffee', 96)[0]  # another size than the export's
        sr, bits = session.run(None, {'lq': image.numpy()})
        with torch.no_grad():
            expected_sr, aux = int8(image, return_aux=True)
        assert torch.equal(torch.from_numpy(bits), aux['bits'])
        assert (torch.from_numpy(sr) - expected_sr).abs().max() * 255 < 0.5
