"""``basicsr infer``: super-resolve your own images (no ground truth) and write their bit maps.

For each input ``<name>.<ext>`` it writes ``<name>.png`` (the SR image) and, for a CADyQ network,
``<name>_bitmap.png`` into the output folder, through the same inference loop as ``basicsr test``
(:func:`~cadyq_plugin.inference.super_resolve`). Every input is checked to be a readable image and every output
to be absent (unless ``--overwrite``) before the first image runs; files are written atomically. The network
runs on ``--device`` (default: the first GPU when there is one, else the CPU; the int8 backend runs on the CPU).
"""
import argparse
import os
import sys
from pathlib import Path

from cadyq_plugin.errors import InputError, OutputExistsError, UserError
from cadyq_plugin.tools.network_args import add_network_args, build_loaded_network, network_options


def build_parser():
    parser = argparse.ArgumentParser(prog='basicsr infer', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_network_args(parser)
    parser.add_argument('-i', '--input', required=True, help='an image file or a folder of images')
    parser.add_argument('-o', '--output', required=True, help='output folder (made if missing)')
    parser.add_argument('--backend', choices=['fake', 'int8'], help='default: the options\' backend, else fake')
    parser.add_argument('--patch', type=int, help='patch-wise inference with LR patches of this size (e.g. 96)')
    parser.add_argument('--step', type=int, help='patch step (default: patch - 6, the reference\'s 96/90)')
    parser.add_argument('--batch', type=int, default=16, help='patches per forward pass (default: 16)')
    parser.add_argument('--device', help='where the network runs, e.g. cuda, cuda:1, cpu (default: cuda when a GPU '
                        'is visible, else cpu; cpu for --backend int8)')
    parser.add_argument('--overwrite', action='store_true', help='replace existing outputs')
    return parser


def choose_device(requested, backend):
    """The ``torch.device`` of ``--device`` (checked), or the default: the current GPU when one is visible and the
    backend can run there, else the CPU."""
    import torch
    if requested is None:
        on_gpu = torch.cuda.is_available() and backend != 'int8'
        return torch.device('cuda', torch.cuda.current_device()) if on_gpu else torch.device('cpu')
    try:
        device = torch.device(requested)
    except RuntimeError as err:
        raise InputError(f'--device {requested!r}: not a device ({err})') from err
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise InputError(f'--device {requested}: no CUDA GPU is visible here; use --device cpu')
    if device.type != 'cpu' and backend == 'int8':
        raise InputError(f'--device {requested} with --backend int8: the int8 backend runs on x86 CPUs only; use '
                         '--backend fake on a GPU, or --device cpu')
    return device


def input_images(path):
    """The image files of ``-i``: the file itself, or the images of the folder (sorted by name)."""
    from cadyq_plugin.data.image_io import image_size, list_images
    path = Path(path)
    paths = list_images(path) if path.is_dir() else [path]
    for image in paths:
        image_size(image)  # header check: an unreadable input is refused by name before any work
    return paths


def read_lr(path):
    """An image file as the network's input: ``[1, 3, H, W]`` RGB float32 in [0, 1]."""
    from basicsr.utils import img2tensor

    from cadyq_plugin.data.image_io import read_image
    return img2tensor(read_image(path).astype('float32') / 255.0, bgr2rgb=True, float32=True).unsqueeze(0)


def patchwise_options(args):
    """``{patch, step, batch}`` from the flags (tiling errors are raised by the tiling itself), or None."""
    if args.patch is None:
        if args.step is not None:
            raise InputError('--step needs --patch')
        return None
    return {'patch': args.patch, 'step': args.patch - 6 if args.step is None else args.step, 'batch': args.batch}


def run(args):
    from basicsr.utils import tensor2img
    from tqdm import tqdm

    from cadyq_plugin.data.image_io import write_png
    from cadyq_plugin.inference import super_resolve
    from cadyq_plugin.reporting.bitmap import bit_map_path, save_bit_map
    images = input_images(args.input)
    sr_paths = {image: Path(args.output) / f'{image.stem}.png' for image in images}
    if not args.overwrite:
        existing = [str(p) for sr in sr_paths.values() for p in (sr, bit_map_path(sr)) if p.exists()]
        if existing:
            raise OutputExistsError(f'{existing[0]} exists ({len(existing)} of the outputs do); pass --overwrite to '
                                  'replace them')
    patchwise = patchwise_options(args)
    net_opt = network_options(args, args.backend)
    device = choose_device(args.device, net_opt.get('backend'))
    net = build_loaded_network(net_opt, args.model).to(device)
    bit_range = (min(net.quant.bits), max(net.quant.bits)) if hasattr(net, 'quant') else None
    os.makedirs(args.output, exist_ok=True)
    for image in tqdm(images, unit='image', desc='basicsr infer'):
        result = super_resolve(net, read_lr(image).to(device, non_blocking=True), patchwise)
        sr_img = tensor2img([result.output.detach().cpu()])
        write_png(sr_paths[image], sr_img)
        fabs = [float(f['bits'].float().mean()) for f in result.forwards if f['bits'].numel()]
        if fabs:
            save_bit_map(sr_paths[image], sr_img, result.regions, fabs, bit_range=bit_range)
            tqdm.write(f'{image.name}: FAB {sum(fabs) / len(fabs):.2f} -> {sr_paths[image]}')
        else:
            tqdm.write(f'{image.name} -> {sr_paths[image]} (no bit selectors: no bit map)')
    return len(images)


def main(argv):
    args = build_parser().parse_args(argv)
    try:
        count = run(args)
    except UserError as err:
        print(f'basicsr infer: {err}', file=sys.stderr)
        return 1
    print(f'basicsr infer: {count} image{"s" if count != 1 else ""} written to {args.output}')
    return 0
