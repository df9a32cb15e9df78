"""MAC counting, BitOPs and FAB against docs/method.md#fab-and-bitops's reference numbers and an independent counter."""
import os

import pytest
import torch
from tiny_workspace import OPTIONS

import cadyq_plugin  # noqa: F401
from cadyq_plugin.archs import EDSR_CADyQ
from cadyq_plugin.cli import main as cli_main
from cadyq_plugin.metrics import (LayerCost, calculate_avg_bit, calculate_bitops, count_layer_macs,
                                  forward_bitops)


@pytest.fixture(scope='module')
def edsr_layers():
    return count_layer_macs(EDSR_CADyQ(quant_mode='cadyq'), 180, 320)


def test_edsr_reference_bitops_at_720p(edsr_layers):
    fp_macs = sum(layer.macs for layer in edsr_layers)
    quantized = sum(layer.macs for layer in edsr_layers if layer.act_kind == 'dynamic')
    assert fp_macs / 1e9 == pytest.approx(114.23, abs=0.005)
    assert quantized / 1e9 == pytest.approx(67.95, abs=0.005)
    assert sum(layer.act_kind == 'dynamic' for layer in edsr_layers) == 32
    assert forward_bitops(edsr_layers, fab=8) / 1e9 == pytest.approx(50.53, abs=0.005)
    assert forward_bitops(edsr_layers, fab=6.0) / 1e9 == pytest.approx(49.47, abs=0.005)


def test_edsr_macs_by_formula(edsr_layers):
    """Independent count: H*W*Cin*Cout*9 per 3x3 conv at its resolution."""
    h, w = 180, 320
    per = {'conv_first': h * w * 3 * 64 * 9, 'conv_after_body': h * w * 64 * 64 * 9,
           'upsample.0': h * w * 64 * 256 * 9, 'upsample.2': 4 * h * w * 64 * 256 * 9,
           'conv_last': 16 * h * w * 64 * 3 * 9, 'body.7.conv2': h * w * 64 * 64 * 9}
    by_name = {layer.name: layer.macs for layer in edsr_layers}
    for name, macs in per.items():
        assert by_name[name] == macs, name


def test_mac_count_matches_mmengine_flop_analysis():
    from mmengine.analysis import FlopAnalyzer
    net = EDSR_CADyQ(quant_mode='fp', num_block=4).eval()
    analyzer = FlopAnalyzer(net, (torch.rand(1, 3, 18, 30),))
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    assert sum(layer.macs for layer in count_layer_macs(net, 18, 30)) == analyzer.by_operator()['conv']


def test_pams_network_counts_fixed_bits():
    layers = count_layer_macs(EDSR_CADyQ(quant_mode='pams', a_bits=4), 18, 32)
    fp = sum(layer.macs for layer in layers if layer.act_kind == 'fp')
    quantized = sum(layer.macs for layer in layers if layer.act_kind == 'fixed')
    assert forward_bitops(layers) == pytest.approx(fp + quantized * (8 / 32) * (4 / 32))


def test_bitops_uses_each_layers_chosen_bit():
    layers = [LayerCost('a', 1000, 32, 'fp', 32), LayerCost('b', 3200, 8, 'dynamic', 0),
              LayerCost('c', 3200, 8, 'dynamic', 1), LayerCost('d', 640, 8, 'fixed', 8)]
    bits = torch.tensor([4.0, 8.0])
    expected = 1000 + 3200 * 0.25 * (4 / 32) + 3200 * 0.25 * (8 / 32) + 640 * 0.25 * 0.25
    assert forward_bitops(layers, bits) == pytest.approx(expected)
    # an image of two patches counts both (overlap included), FAB is the unweighted mean over patches
    forwards = [{'layers': layers, 'bits': bits}, {'layers': layers, 'bits': torch.tensor([4.0, 4.0])}]
    second = 1000 + 3200 * 0.25 * (4 / 32) * 2 + 640 * 0.25 * 0.25
    assert calculate_bitops(forwards) == pytest.approx((expected + second) / 1e9)
    assert calculate_avg_bit(forwards) == pytest.approx((6.0 + 4.0) / 2)


def test_avg_bit_needs_quantized_activations():
    forwards = [{'layers': [], 'bits': torch.zeros(0)}]
    assert calculate_avg_bit(forwards, static_bits=8) == 8.0
    with pytest.raises(ValueError, match='pams or cadyq'):
        calculate_avg_bit(forwards)


def test_bitops_command_prints_the_reference_numbers(capsys):
    assert cli_main(['bitops', '-opt', os.path.join(OPTIONS, 'train_edsrbaseline_cadyq.yml'), '--fab', '6']) == 0
    out = capsys.readouterr().out
    assert 'BitOPs FP        :   114.23 G' in out
    assert 'BitOPs W8A8      :    50.53 G' in out
    assert 'BitOPs CADyQ FAB 6   :    49.47 G' in out
    assert 'body.15.conv2' in out
