"""``basicsr int8-accuracy``: accuracy of full-integer networks (``fp_layer_bits``): PSNR / SSIM / FAB on
held-out photos of the reference network (FP layers in float) against the same network with 8-bit FP layers, from
a post-training calibration and, given one, from a quantization-aware training run; each in the fake and the int8
backend.

``basicsr int8-accuracy --arch EDSR_CADyQ --model net_g.pth --calibrate LR_FOLDER [--qat net_g_fp8.pth]`` prints
the markdown table of docs/deployment.md. The held-out photos are scikit-image's that the quickstart never trains
on (the motorcycle stereo pair, the Hubble deep field, the retina, and four greyscale photos as RGB), centre crops
with MATLAB-bicubic LR; metrics as in the test options (Y channel, border 4). ``--model`` and ``--qat`` may be
float (``params``) or int8 (``basicsr export``) checkpoints.
"""
import argparse

import numpy as np
import torch

HELD_OUT = ('motorcycle_left', 'motorcycle_right', 'hubble_deep_field', 'retina', 'camera', 'moon', 'coins',
            'gravel')


def held_out_photo(name, size, scale):
    """The centre ``size`` crop of a scikit-image photo (RGB uint8 HR) and its MATLAB-bicubic LR tensor."""
    import skimage.data
    from basicsr.utils.matlab_functions import imresize
    if name.startswith('motorcycle_'):
        img = skimage.data.stereo_motorcycle()[0 if name.endswith('left') else 1]
    else:
        img = getattr(skimage.data, name)()
    img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
    size = min(size, *img.shape[:2]) // scale * scale
    top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
    hr = img[top:top + size, left:left + size]
    lr = np.clip(imresize(hr.astype(np.float32) / 255.0, 1 / scale), 0, 1).astype(np.float32)
    return hr, torch.from_numpy(np.ascontiguousarray(lr)).permute(2, 0, 1).unsqueeze(0)


def evaluate(net, photos):
    """Mean Y-channel PSNR / SSIM (border 4) and FAB of ``net`` (eval mode) over ``photos`` [(hr, lr)]."""
    from basicsr.metrics import calculate_psnr, calculate_ssim
    from basicsr.utils import tensor2img

    from cadyq_plugin.inference import super_resolve
    psnr = ssim = fab = 0.0
    for hr, lr in photos:
        result = super_resolve(net, lr)
        sr = tensor2img([result.output])
        reference = hr[..., ::-1]  # tensor2img gives BGR
        psnr += calculate_psnr(sr, reference, 4, test_y_channel=True)
        ssim += calculate_ssim(sr, reference, 4, test_y_channel=True)
        bits = result.forwards[0]['bits']
        fab += float(bits.float().mean()) if bits.numel() else float('nan')
    count = len(photos)
    return psnr / count, ssim / count, fab / count


def build(arch, quant_mode, backend, fp_layer_bits, state_dict):
    import cadyq_plugin  # noqa: F401  (registration)
    from basicsr.archs import build_network
    net = build_network({'type': arch, 'quant_mode': quant_mode, 'backend': backend, 'fp_layer_bits': fp_layer_bits})
    net.load_state_dict(state_dict)
    return net.eval()


def float_state_dict(arch, quant_mode, fp_layer_bits, path, missing_ok=()):
    """The state dict of a float or int8 checkpoint, as an int8-backend network loads it (int8 weights become
    their float values, which the fake backend loads as an ordinary checkpoint)."""
    import cadyq_plugin  # noqa: F401
    from basicsr.archs import build_network

    from cadyq_plugin.deploy import load_weights
    net = build_network({'type': arch, 'quant_mode': quant_mode, 'backend': 'int8', 'fp_layer_bits': fp_layer_bits})
    load_weights(net, path, missing_ok)
    return net.state_dict()


def post_training(arch, quant_mode, reference, images):
    """The reference weights with 8-bit FP layers calibrated on ``images`` (post-training), as a state dict."""
    import cadyq_plugin  # noqa: F401
    from basicsr.archs import build_network

    from cadyq_plugin.deploy import calibrate_fp_layers, fp_layer_range_keys
    net = build_network({'type': arch, 'quant_mode': quant_mode, 'backend': 'int8', 'fp_layer_bits': 8})
    missing = set(net.load_state_dict(reference, strict=False).missing_keys) - fp_layer_range_keys(net)
    if missing:
        raise ValueError(f'the reference checkpoint does not fit {arch}: missing {sorted(missing)[:5]}')
    calibrate_fp_layers(net, images)
    return net.state_dict()


def accuracy_rows(arch, quant_mode, reference, photos, calibration, qat=None):
    """``[(row label, backend, (psnr, ssim, fab))]``: the reference network, the post-training full-integer
    network and (given ``qat``, a state dict with 8-bit FP layers) the quantization-aware one."""
    rows = []
    for backend in ('fake', 'int8'):
        rows.append(('reference (FP layers in float)', backend,
                     evaluate(build(arch, quant_mode, backend, None, reference), photos)))
    ptq = post_training(arch, quant_mode, reference, calibration)
    for backend in ('fake', 'int8'):
        rows.append(('post-training 8-bit FP layers', backend, evaluate(build(arch, quant_mode, backend, 8, ptq),
                                                                        photos)))
    if qat is not None:
        for backend in ('fake', 'int8'):
            rows.append(('quantization-aware 8-bit FP layers', backend,
                         evaluate(build(arch, quant_mode, backend, 8, qat), photos)))
    return rows


def format_rows(rows):
    base = rows[0][2][0]
    lines = ['| network | backend | PSNR (dB) | vs reference fake | SSIM | FAB |', '|---|---|---:|---:|---:|---:|']
    for label, backend, (psnr, ssim, fab) in rows:
        lines.append(f'| {label} | {backend} | {psnr:.4f} | {psnr - base:+.4f} | {ssim:.4f} | {fab:.3f} |')
    return '\n'.join(lines)


def build_parser():
    parser = argparse.ArgumentParser(prog='basicsr int8-accuracy', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', default='EDSR_CADyQ')
    parser.add_argument('--quant-mode', default='cadyq', choices=['pams', 'cadyq'])
    parser.add_argument('--model', required=True, help='the reference network (trained without fp_layer_bits)')
    parser.add_argument('--qat', help='the same network trained with fp_layer_bits: 8 (stages 2-3)')
    parser.add_argument('--calibrate', required=True, help='folder of LR images for the post-training calibration')
    parser.add_argument('--size', type=int, default=256, help='HR crop of each held-out photo (default 256)')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    from cadyq_plugin.tools.infer import input_images, read_lr
    with torch.no_grad():  # not set_grad_enabled: main runs in the caller's process (basicsr, tests)
        reference = float_state_dict(args.arch, args.quant_mode, None, args.model)
        qat = float_state_dict(args.arch, args.quant_mode, 8, args.qat) if args.qat else None
        photos = [held_out_photo(name, args.size, 4) for name in HELD_OUT]
        calibration = [read_lr(path) for path in input_images(args.calibrate)]
        rows = accuracy_rows(args.arch, args.quant_mode, reference, photos, calibration, qat)
    print(f'{args.arch} ({args.quant_mode}) on {len(photos)} held-out photos (HR {args.size} crops, Y-channel '
          f'PSNR/SSIM, border 4); post-training calibration on {len(calibration)} images of {args.calibrate}')
    print(format_rows(rows))
    return 0

