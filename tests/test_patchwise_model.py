"""Patch-wise inference in CADyQModel (docs/method.md#patch-wise-inference): stitching, per-patch bits, batch invariance."""
import pytest
import torch

import cadyq_plugin  # noqa: F401
from cadyq_plugin.archs import EDSR_CADyQ
from cadyq_plugin.data.patches import patch_boxes, round_to_uint8_grid
from cadyq_plugin.metrics import calculate_avg_bit, calculate_bitops, count_layer_macs, forward_bitops
from cadyq_plugin.models import CADyQModel

NET = {'num_feat': 16, 'num_block': 2, 'upscale': 2, 'quant_mode': 'cadyq'}


def random_cadyq_checkpoint(path):
    """An EDSR CADyQ network whose selectors disagree across patches (so bits vary)."""
    torch.manual_seed(0)
    net = EDSR_CADyQ(**NET)
    with torch.no_grad():
        for name, param in net.named_parameters():
            if '.fc.' in name:
                param.normal_(0, 0.05 if name.endswith('weight') else 1.0)
            elif name.endswith('alpha'):
                param.uniform_(0.5, 4.0)
    torch.save({'params': net.state_dict()}, path)
    return net.eval()


def make_model(tmp_path, ckpt, patchwise):
    opt = {'name': 'pw', 'num_gpu': 0, 'is_train': False, 'dist': False, 'rank': 0, 'world_size': 1,
           'network_g': dict(NET, type='EDSR_CADyQ'), 'path': {'pretrain_network_g': str(ckpt)},
           'val': {'patchwise': patchwise} if patchwise else {}}
    return CADyQModel(opt)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('pw')
    ckpt = tmp / 'net.pth'
    net = random_cadyq_checkpoint(ckpt)
    import skimage.data
    img = torch.from_numpy(skimage.data.coffee()[:74, :58].astype('float32') / 255).permute(2, 0, 1)[None]
    return tmp, ckpt, net, img.contiguous()


def run(model, lq):
    model.lq = lq
    model.test()
    return model.output, model.forwards, model.regions


def test_patchwise_equals_a_manual_reference(setup):
    tmp, ckpt, net, lq = setup
    patch, step, scale = 24, 18, 2
    out, forwards, regions = run(make_model(tmp, ckpt, {'patch': patch, 'step': step, 'batch': 1}), lq)
    boxes = patch_boxes(lq.shape[2], lq.shape[3], patch, step)
    assert len(forwards) == len(boxes) == len(regions)
    # reference: run every patch alone, centre-crop by docs/method.md#patch-wise-inference written out here, compare
    s = (patch - step) // 2 * scale
    expected = torch.zeros_like(out)
    with torch.no_grad():
        for (y0, y1, x0, x1), fwd in zip(boxes, forwards):
            sr, aux = net(lq[:, :, y0:y1, x0:x1], return_aux=True)
            assert torch.equal(aux['bits'][0], fwd['bits'])
            sr = round_to_uint8_grid(sr)
            ys = 0 if y0 == 0 else s
            ye = sr.shape[2] if y1 == lq.shape[2] else s + step * scale
            xs = 0 if x0 == 0 else s
            xe = sr.shape[3] if x1 == lq.shape[3] else s + step * scale
            expected[:, :, y0 * scale + ys:y0 * scale + ye, x0 * scale + xs:x0 * scale + xe] = sr[:, :, ys:ye, xs:xe]
    assert torch.equal(out, expected)
    bits = torch.stack([f['bits'] for f in forwards])
    assert bits.unique().numel() > 1, 'the random selectors should choose different bits'
    # per-image FAB: unweighted mean over patches; BitOPs: sum over patches with their own MACs
    assert calculate_avg_bit(forwards) == pytest.approx(bits.mean(1).mean().item())
    total = sum(forward_bitops(count_layer_macs(net, y1 - y0, x1 - x0), f['bits'])
                for (y0, y1, x0, x1), f in zip(boxes, forwards))
    assert calculate_bitops(forwards) == pytest.approx(total / 1e9)


@pytest.mark.parametrize('batch', [2, 3, 64])
def test_patchwise_is_batch_invariant(setup, batch):
    tmp, ckpt, _, lq = setup
    ref_out, ref_forwards, _ = run(make_model(tmp, ckpt, {'patch': 24, 'step': 18, 'batch': 1}), lq)
    out, forwards, _ = run(make_model(tmp, ckpt, {'patch': 24, 'step': 18, 'batch': batch}), lq)
    assert torch.equal(out, ref_out)
    assert all(torch.equal(a['bits'], b['bits']) for a, b in zip(forwards, ref_forwards))


def test_image_wise_is_one_forward(setup):
    tmp, ckpt, net, lq = setup
    out, forwards, regions = run(make_model(tmp, ckpt, None), lq)
    with torch.no_grad():
        assert torch.equal(out, net(lq))
    assert len(forwards) == 1 and regions == [(0, out.shape[2], 0, out.shape[3])]


PATCHWISE_MEMORY_SCRIPT = r'''
import resource, sys, torch
import cadyq_plugin
from cadyq_plugin.models import CADyQModel
torch.manual_seed(0)
opt = {'name': 'big', 'num_gpu': 0, 'is_train': False, 'dist': False, 'rank': 0, 'world_size': 1,
       'network_g': {'type': 'EDSR_CADyQ', 'num_feat': 8, 'num_block': 1, 'upscale': 4},
       'path': {'pretrain_network_g': None}, 'val': {'patchwise': {'patch': 96, 'step': 90, 'batch': 8}}}
model = CADyQModel(opt)
model.lq = torch.rand(1, 3, int(sys.argv[1]), int(sys.argv[2]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
model.test()
growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(len(model.forwards), model.output.numel() * 4 / 2**20, growth)
'''


def patchwise_memory(lr_h, lr_w):
    """(patches, output MiB, peak RSS growth MiB) of a patch-wise test() in a fresh process."""
    import subprocess
    import sys
    result = subprocess.run([sys.executable, '-c', PATCHWISE_MEMORY_SCRIPT, str(lr_h), str(lr_w)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    n_patches, output_mib, growth_mib = result.stdout.split()
    return int(n_patches), float(output_mib), float(growth_mib)


def test_8k_output_runs_patchwise_on_the_cpu_with_memory_bounded_by_the_batch():
    """LR 1080x2048 at x4 (an 8K output) runs on the CPU. Holding all 242 SR patches would add 428 MiB on top of
    the 405 MiB output (107 MiB for the quarter-size image); with bounded memory, what the peak adds beyond the
    output is the same for both sizes (one batch)."""
    n_large, out_large, growth_large = patchwise_memory(1080, 2048)
    n_small, out_small, growth_small = patchwise_memory(540, 1024)
    assert n_large == 11 * 22 and n_small == 5 * 11  # starts 0, 90, ..., 900 x 0, 90, ..., 1890
    assert out_large == pytest.approx(405, abs=1)
    assert (growth_large - out_large) - (growth_small - out_small) < 150
