"""Deployment: the int8 checkpoint, the ONNX graph (run by onnxruntime) and the ``infer``/``export`` commands."""
import os

import cv2
import numpy as np
import pytest
import torch
from int8_helpers import network_pair, photo_pair

import cadyq_plugin  # noqa: F401
from cadyq_plugin.checkpoint import CheckpointError
from cadyq_plugin.cli import main as cli_main
from cadyq_plugin.deploy import export_onnx, load_weights, save_int8_checkpoint
from cadyq_plugin.quant import QConv2d

# small networks of every backbone: the graphs are the real ones, with fewer blocks and channels
TINY = {
    'EDSR_CADyQ': {'num_block': 2, 'num_feat': 16},
    'CARN_CADyQ': {'num_block': 1, 'num_res_block': 2, 'num_feat': 16},
    'IDN_CADyQ': {'num_block': 1},
    'SRResNet_CADyQ': {'num_block': 2, 'num_feat': 16},
}


@pytest.fixture(scope='module')
def lr():
    return torch.cat([photo_pair(name, 64)[0] for name in ('astronaut', 'coffee', 'chelsea')])


@pytest.mark.parametrize('arch', sorted(TINY))
def test_int8_checkpoint_is_a_quarter_and_reproduces_the_int8_network(arch, lr, tmp_path):
    _, int8 = network_pair(arch, 'cadyq', lr, **TINY[arch])
    path = tmp_path / 'int8.pth'
    save_int8_checkpoint(int8, path)
    stored = torch.load(path, weights_only=True)['params_int8']
    convs = {name for name, m in int8.named_modules() if isinstance(m, QConv2d)}
    assert all(stored[f'{name}.weight_levels'].dtype == torch.int8 for name in convs)
    assert not any(f'{name}.weight' in stored for name in convs)
    fp32 = sum(m.weight.numel() * 4 for m in int8.modules() if isinstance(m, QConv2d))
    int8_bytes = sum(stored[f'{n}.weight_levels'].numel() + stored[f'{n}.weight_max'].numel() * 4 for n in convs)
    assert int8_bytes < 0.26 * fp32
    loaded = network_pair(arch, 'cadyq', lr, seed=1, **TINY[arch])[1]  # other weights, then the checkpoint's
    assert load_weights(loaded, str(path)) == 'int8'
    with torch.no_grad():
        (sr, aux), (sr_loaded, aux_loaded) = int8(lr, return_aux=True), loaded(lr, return_aux=True)
    assert torch.equal(sr, sr_loaded) and torch.equal(aux['bits'], aux_loaded['bits'])


def test_int8_checkpoint_loads_into_the_int8_backend_only(lr, tmp_path):
    fake, int8 = network_pair('EDSR_CADyQ', 'pams', lr, **TINY['EDSR_CADyQ'])
    path = str(tmp_path / 'int8.pth')
    save_int8_checkpoint(int8, path)
    with pytest.raises(CheckpointError, match='backend int8 only'):
        load_weights(fake, path)
    other = network_pair('EDSR_CADyQ', 'pams', lr, num_block=3, num_feat=16)[1]
    with pytest.raises(CheckpointError, match='missing key body.2.conv1.weight_levels'):
        load_weights(other, path)


@pytest.mark.parametrize('arch,mode', [(arch, 'cadyq') for arch in sorted(TINY)] + [('EDSR_CADyQ', 'pams')])
def test_onnx_graph_selects_bits_inside_and_matches_the_int8_backend(arch, mode, lr, tmp_path):
    """onnxruntime runs the exported graph on other sizes than the export's: the same bits per sample, and the
    SR output of the PyTorch int8 backend."""
    import onnx
    import onnxruntime
    _, int8 = network_pair(arch, mode, lr, **TINY[arch])
    path = str(tmp_path / 'net.onnx')
    export_onnx(int8, path)
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert {'ConvInteger'} <= ops and 'QLinearConv' not in ops
    if mode == 'cadyq':
        assert {'ArgMax', 'Gemm', 'ReduceMean', 'Sqrt'} <= ops
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    for x in (lr, lr[1:2, :, :13, :11]):
        outputs = session.run(None, {'lq': x.numpy()})
        with torch.no_grad():
            sr, aux = int8(x, return_aux=True)
        if mode == 'cadyq':
            assert torch.equal(torch.from_numpy(outputs[1]), aux['bits'])
        assert np.abs(outputs[0] - sr.numpy()).max() * 255 < 0.05


def write_tiny_setup(root, arch='EDSR_CADyQ', mode='cadyq'):
    """An options file of a tiny network, its checkpoint and a folder of two photos."""
    os.makedirs(root / 'in')
    lr = torch.cat([photo_pair(name, 64)[0] for name in ('astronaut', 'coffee')])
    fake, _ = network_pair(arch, mode, lr, **TINY[arch])
    torch.save({'params': fake.state_dict()}, root / 'net.pth')
    with open(root / 'net.yml', 'w') as f:
        f.write(f'network_g:\n  type: {arch}\n  quant_mode: {mode}\n' +
                ''.join(f'  {k}: {v}\n' for k, v in TINY[arch].items()))
    for i, name in enumerate(('astronaut', 'coffee')):
        img = (lr[i].permute(1, 2, 0).numpy()[..., ::-1] * 255).round().astype(np.uint8)
        cv2.imwrite(str(root / 'in' / f'{name}.png'), img)
    return fake


def test_infer_writes_sr_and_bit_maps_and_never_overwrites(tmp_path, capsys):
    fake = write_tiny_setup(tmp_path)
    common = ['infer', '-opt', str(tmp_path / 'net.yml'), '--model', str(tmp_path / 'net.pth')]
    out = tmp_path / 'out'
    assert cli_main(common + ['-i', str(tmp_path / 'in'), '-o', str(out), '--patch', '8', '--step', '6']) == 0
    assert sorted(os.listdir(out)) == ['astronaut.png', 'astronaut_bitmap.png', 'coffee.png', 'coffee_bitmap.png']
    sr = cv2.imread(str(out / 'astronaut.png'))
    assert sr.shape == (64, 64, 3)
    bit_map = cv2.imread(str(out / 'astronaut_bitmap.png'))
    assert bit_map.shape[1] == 64 and bit_map.shape[0] > 64  # the legend strip below
    # the same image through the library: what infer wrote is the network's output
    from basicsr.utils import img2tensor, tensor2img

    from cadyq_plugin.inference import super_resolve
    lq = img2tensor(cv2.imread(str(tmp_path / 'in' / 'astronaut.png')).astype(np.float32) / 255.)[None]
    expected = tensor2img([super_resolve(fake, lq, {'patch': 8, 'step': 6, 'batch': 16}).output])
    assert np.array_equal(sr, expected)
    before = (out / 'astronaut.png').read_bytes()
    assert cli_main(common + ['-i', str(tmp_path / 'in'), '-o', str(out), '--backend', 'int8']) == 1
    assert 'exists' in capsys.readouterr().err and (out / 'astronaut.png').read_bytes() == before
    assert cli_main(common + ['-i', str(tmp_path / 'in'), '-o', str(out), '--backend', 'int8', '--overwrite']) == 0
    image_wise = tensor2img([super_resolve(fake, lq).output])
    assert np.abs(cv2.imread(str(out / 'astronaut.png')).astype(int) - image_wise).max() <= 1


def test_infer_refuses_unreadable_inputs_by_name(tmp_path, capsys):
    write_tiny_setup(tmp_path)
    (tmp_path / 'in' / 'broken.png').write_bytes(b'not an image')
    out = tmp_path / 'out'
    args = ['infer', '-opt', str(tmp_path / 'net.yml'), '--model', str(tmp_path / 'net.pth'), '-i',
            str(tmp_path / 'in'), '-o', str(out)]
    assert cli_main(args) == 1
    assert 'broken.png' in capsys.readouterr().err and not out.exists()
    assert cli_main(args[:-4] + ['-i', str(tmp_path / 'missing.png'), '-o', str(out)]) == 1
    assert 'missing.png' in capsys.readouterr().err


def test_export_writes_an_int8_checkpoint_and_onnx_graph(tmp_path, capsys):
    write_tiny_setup(tmp_path, 'IDN_CADyQ', 'pams')
    out, onnx_path = tmp_path / 'idn_int8.pth', tmp_path / 'idn.onnx'
    args = ['export', '-opt', str(tmp_path / 'net.yml'), '--model', str(tmp_path / 'net.pth'), str(out)]
    assert cli_main(args + ['--onnx', str(onnx_path)]) == 0
    assert 'quantized convs' in capsys.readouterr().out and onnx_path.stat().st_size > 0
    assert os.path.getsize(out) < os.path.getsize(tmp_path / 'net.pth')
    assert cli_main(args) == 1 and 'exists' in capsys.readouterr().err
    # the int8 checkpoint is what infer needs, with the int8 backend
    assert cli_main(['infer', '-opt', str(tmp_path / 'net.yml'), '--model', str(out), '-i',
                     str(tmp_path / 'in' / 'coffee.png'), '-o', str(tmp_path / 'out'), '--backend', 'int8']) == 0
    assert (tmp_path / 'out' / 'coffee.png').exists() and not (tmp_path / 'out' / 'coffee_bitmap.png').exists()
    assert cli_main(['export', '--arch', 'EDSR_CADyQ', '--quant-mode', 'fp', '--model', str(tmp_path / 'net.pth'),
                     str(tmp_path / 'fp.pth')]) == 1
    assert "needs quant_mode 'pams' or 'cadyq'" in capsys.readouterr().err


def test_basicsr_test_models_load_the_int8_checkpoint(tmp_path):
    """``path.pretrain_network_g`` may be the int8 checkpoint of ``basicsr export`` (network built with backend
    int8): the model's inference equals that of the int8 network loaded from the float checkpoint."""
    from basicsr.archs import build_network
    from cadyq_plugin.deploy import save_int8_checkpoint
    from cadyq_plugin.models import CADyQSRModel
    small = {'type': 'EDSR_CADyQ', 'num_feat': 8, 'num_block': 1, 'calib_iters': 0}
    torch.manual_seed(0)
    float_net = build_network(small)
    torch.save({'params': float_net.state_dict()}, tmp_path / 'float.pth')
    int8_net = build_network({**small, 'backend': 'int8'})
    int8_net.load_state_dict(float_net.state_dict())
    int8_net.eval()
    int8_net(torch.rand(1, 3, 8, 8))  # the int8 weights exist after one eval forward
    save_int8_checkpoint(int8_net, tmp_path / 'int8.pth')
    outputs = []
    for name in ('float.pth', 'int8.pth'):
        opt = {'name': 'unit', 'num_gpu': 0, 'is_train': False, 'dist': False, 'rank': 0, 'world_size': 1,
               'network_g': {**small, 'backend': 'int8'}, 'path': {'pretrain_network_g': str(tmp_path / name)},
               'val': {}}
        model = CADyQSRModel(opt)
        model.feed_data({'lq': torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(1))})
        model.test()
        outputs.append((model.output, model.forwards[0]['bits']))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])
