"""Converted original EDSR checkpoints reproduce the original implementation's golden vectors."""
import os

import pytest
import torch

import cadyq_plugin  # noqa: F401
from cadyq_plugin.archs import EDSR_CADyQ
from cadyq_plugin.checkpoint import CheckpointError
from cadyq_plugin.cli import main as cli_main
from cadyq_plugin.convert import convert_state_dict

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'reference')
GOLDEN = os.path.join(REFERENCE, 'edsr_cadyq_golden.pt')
KEYS = os.path.join(REFERENCE, 'state_dict_keys')


@pytest.fixture(scope='module')
def golden():
    return torch.load(GOLDEN, weights_only=True)


def fake_original_state_dict(path, seed=0):
    """Random tensors in the original key layout of ``path`` (mean shifts set to the EDSR mean)."""
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    mean = torch.tensor([0.4488, 0.4371, 0.4040]) * 255
    for line in open(path):
        key, shape = line.strip().split(' ', 1)
        shape = tuple(int(v) for v in shape.strip('()').split(',') if v.strip())
        state_dict[key] = torch.randn(shape, generator=generator)
        if key.endswith('mean.weight'):
            state_dict[key] = torch.eye(3).view(3, 3, 1, 1)
        elif key.endswith('mean.bias'):
            state_dict[key] = -mean if key.startswith('sub') else mean.clone()
    return state_dict


def test_golden_vectors_reproduced(golden, tmp_path):
    src = tmp_path / 'original_cadyq.pt'
    torch.save({'state_dict': golden['state_dict']}, src)
    dst = tmp_path / 'converted.pth'
    assert cli_main(['convert', str(src), str(dst), '--arch', 'EDSR_CADyQ', '--quant-mode', 'cadyq']) == 0
    net = EDSR_CADyQ(quant_mode='cadyq')
    net.load_state_dict(torch.load(dst, weights_only=True)['params'], strict=True)
    net.eval()
    with torch.no_grad():
        sr, aux = net(golden['input_0_255'] / 255.0, return_aux=True)
    assert torch.equal(aux['bits'], golden['selector_bits'].float())
    assert torch.equal(aux['bits'].sum(1), golden['bits_sum'].float())
    assert (sr * 255 - golden['sr_0_255']).abs().max() < 1e-3
    assert (aux['body'] - golden['body_out']).abs().max() < 1e-3
    assert golden['selector_bits'].unique().numel() == 3, 'the golden set exercises every candidate'


@pytest.mark.parametrize('stage', ['fp', 'pams', 'cadyq'])
def test_original_layouts_convert_and_load_strictly(stage):
    state_dict = fake_original_state_dict(os.path.join(KEYS, f'edsr_{stage}_keys.txt'))
    net = EDSR_CADyQ(quant_mode=stage)
    converted, layout = convert_state_dict(state_dict, net, 'EDSR_CADyQ', stage, 4)
    assert layout == 'original'
    net.load_state_dict(converted, strict=True)
    # every tensor of the source (except mean shifts and the unused PAMS quant_act2) lands somewhere
    used = sum(v.numel() for k, v in state_dict.items() if 'mean' not in k and 'quant_act2' not in k)
    assert used == sum(v.numel() for v in converted.values())


def test_conversion_refuses_the_wrong_stage_with_the_differences():
    state_dict = fake_original_state_dict(os.path.join(KEYS, 'edsr_pams_keys.txt'))
    with pytest.raises(CheckpointError) as err:
        convert_state_dict(state_dict, EDSR_CADyQ(quant_mode='cadyq'), 'EDSR_CADyQ', 'cadyq', 4)
    message = str(err.value)
    assert 'missing key body.0.quant_in.fc.weight' in message
    assert 'unexpected key body.0.quant_act1.alpha' in message


def test_conversion_refuses_a_wrong_mean_shift():
    state_dict = fake_original_state_dict(os.path.join(KEYS, 'edsr_fp_keys.txt'))
    state_dict['sub_mean.bias'] = torch.zeros(3)
    with pytest.raises(CheckpointError, match='sub_mean.bias is not the mean shift'):
        convert_state_dict(state_dict, EDSR_CADyQ(quant_mode='fp'), 'EDSR_CADyQ', 'fp', 4)


def test_basicsr_edsr_checkpoint_is_the_fp_stage(tmp_path):
    """BasicSR's own EDSR (64 features, 16 blocks) converts into EDSR_CADyQ fp with identical outputs."""
    from basicsr.archs.edsr_arch import EDSR
    torch.manual_seed(0)
    edsr = EDSR(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=16, upscale=4, res_scale=1, img_range=255.)
    src, dst = tmp_path / 'EDSR_Mx4_f64b16.pth', tmp_path / 'fp.pth'
    torch.save({'params': edsr.state_dict()}, src)
    assert cli_main(['convert', str(src), str(dst), '--arch', 'EDSR_CADyQ', '--quant-mode', 'fp']) == 0
    net = EDSR_CADyQ(quant_mode='fp')
    net.load_state_dict(torch.load(dst, weights_only=True)['params'])
    x = torch.rand(2, 3, 12, 10)
    with torch.no_grad():
        assert torch.allclose(net(x), edsr.eval()(x), atol=1e-5)
    # and it is refused as a quantized stage
    assert cli_main(['convert', str(src), str(tmp_path / 'x.pth'), '--arch', 'EDSR_CADyQ',
                     '--quant-mode', 'pams']) == 1


def test_convert_never_overwrites_without_asking(golden, tmp_path, capsys):
    src = tmp_path / 'src.pt'
    torch.save(golden['state_dict'], src)
    dst = tmp_path / 'dst.pth'
    dst.write_bytes(b'precious')
    assert cli_main(['convert', str(src), str(dst), '--arch', 'EDSR_CADyQ', '--quant-mode', 'cadyq']) == 1
    assert dst.read_bytes() == b'precious'
    assert 'exists' in capsys.readouterr().err
    # a failed conversion (wrong stage) leaves no file behind
    bad_dst = tmp_path / 'bad.pth'
    assert cli_main(['convert', str(src), str(bad_dst), '--arch', 'EDSR_CADyQ', '--quant-mode', 'pams']) == 1
    assert not bad_dst.exists()
