"""The network arguments ``basicsr infer`` and ``basicsr export`` share: ``--arch`` (+ mode, scale) or ``-opt X.yml``
for the network options, ``--model`` for its weights."""
import argparse

from cadyq_plugin.errors import InputError
from cadyq_plugin.options import read_yml


class NetworkArgError(InputError):
    """A network option or checkpoint the command cannot use; the message names the option, file or value."""


def add_network_args(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--arch', help='registered arch, e.g. EDSR_CADyQ (its defaults: the paper\'s x4 network)')
    source.add_argument('-opt', help='options yml whose network_g section describes the network')
    parser.add_argument('--quant-mode', choices=['fp', 'pams', 'cadyq'], help='with --arch (default: cadyq)')
    parser.add_argument('--scale', type=int, help='with --arch: upscale factor (default: 4)')
    parser.add_argument('--fp-layer-bits', type=int, help='quantize the convs the reference keeps in FP at this '
                        'bit-width, e.g. 8 (network_g.fp_layer_bits; also with -opt)')
    parser.add_argument('--model', required=True, help='checkpoint: BasicSR (params) or int8 (basicsr export)')


def network_options(args, backend=None):
    """``network_g`` options from ``--arch``/``-opt``; ``backend`` (if given) replaces the options' backend."""
    if args.opt is not None:
        if args.quant_mode or args.scale:
            raise NetworkArgError('--quant-mode and --scale go with --arch; with -opt they come from network_g')
        opt = read_yml(args.opt)
        if not isinstance(opt, dict) or not isinstance(opt.get('network_g'), dict):
            raise NetworkArgError(f'options file {args.opt!r} has no network_g section')
        net_opt = dict(opt['network_g'])
    else:
        net_opt = {'type': args.arch}
        if args.quant_mode:
            net_opt['quant_mode'] = args.quant_mode
        if args.scale:
            net_opt['upscale'] = args.scale
    if backend is not None:
        net_opt['backend'] = backend
    if args.fp_layer_bits is not None:
        net_opt['fp_layer_bits'] = args.fp_layer_bits
    return net_opt


def build_loaded_network(net_opt, model_path, missing_ok=None):
    """Build ``net_opt`` (BasicSR's registry), load ``model_path`` strictly and return the network in eval mode.
    ``missing_ok(net)`` names the entries the checkpoint may lack (see :func:`~cadyq_plugin.deploy.load_weights`)."""
    import cadyq_plugin  # noqa: F401  (registration)
    from basicsr.archs import build_network
    from basicsr.utils.registry import ARCH_REGISTRY

    from cadyq_plugin.deploy import load_weights
    if net_opt.get('type') not in ARCH_REGISTRY:
        raise NetworkArgError(f'network type {net_opt.get("type")!r} is not a registered arch')
    try:
        net = build_network(dict(net_opt))
    except (TypeError, ValueError) as err:
        raise NetworkArgError(f'network {net_opt}: {err}') from err
    load_weights(net, model_path, missing_ok(net) if missing_ok else ())
    return net.eval()

