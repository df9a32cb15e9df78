"""Fake/int8 network pairs and a layer-by-layer comparison of their quantized activations (tests only)."""
import numpy as np
import torch

import cadyq_plugin  # noqa: F401  (compat shim before basicsr)
from basicsr.archs import build_network  # noqa: E402  (isort: skip)
from cadyq_plugin.quant import BitSelector, PAMSQuant, set_calibration
from cadyq_plugin.quant.int8 import QuantizedActivation

ARCHS = ('EDSR_CADyQ', 'CARN_CADyQ', 'IDN_CADyQ', 'SRResNet_CADyQ')


def photo_pair(name, size=128, scale=4):
    """A centre crop of a scikit-image photo (HR, [1, 3, size, size] in [0, 1]) and its MATLAB-bicubic LR."""
    import skimage.data
    from basicsr.utils.matlab_functions import imresize
    img = getattr(skimage.data, name)()[..., :3]
    top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
    hr = img[top:top + size, left:left + size].astype(np.float32) / 255.0
    lr = np.clip(imresize(hr, 1 / scale), 0, 1).astype(np.float32)
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).unsqueeze(0)  # noqa: E731
    return as_tensor(lr), as_tensor(hr)


def network_pair(arch, mode, calibration_input, seed=0, **options):
    """The fake and the int8 network with the same weights, both in eval mode: default init, PAMS ranges
    calibrated on ``calibration_input`` (docs/method.md#quantizers), selector weights randomised so that inputs choose different
    bits."""
    torch.manual_seed(seed)
    fake = build_network({'type': arch, 'quant_mode': mode, **options})
    with torch.no_grad():
        for name, param in fake.named_parameters():
            if name.endswith('fc.weight'):  # scaled like the image feature (grad_scale 1e3, CARN 1)
                param.normal_(0, 10 / fake.grad_scale)
        set_calibration(fake, True)
        fake.train()(calibration_input)
        set_calibration(fake, False)
    int8 = build_network({'type': arch, 'quant_mode': mode, 'backend': 'int8', **options})
    int8.load_state_dict(fake.state_dict())
    return fake.eval(), int8.eval()


def _levels(value, alpha, q):
    return torch.round(value / (alpha / q))


def compare_layers(fake, int8, x):
    """Run both networks on ``x`` and compare every activation quantizer layer by layer.

    The int8 network is given the fake network's levels at every quantizer after they are compared, so each
    layer sees the same input in both and a difference is that layer's own (a value on a rounding boundary,
    where the integer conv is exact and the float conv rounds), not one carried over from earlier layers.
    Returns ``(fake_out, fake_aux, int8_out, int8_aux, {quantizer: (values, differing, max |level difference|)})``.
    """
    names = [name for name, m in int8.named_modules()
             if isinstance(m, BitSelector) or (isinstance(m, PAMSQuant) and '.quantizers.' not in name)]
    fake_values, stats, handles = {}, {}, []

    def keep(name):
        return lambda module, inputs, output: fake_values.__setitem__(name, output)

    def force(name):

        def hook(module, inputs, output):
            reference = fake_values[name]
            if isinstance(output, QuantizedActivation):
                alpha, q = output.alpha, output.q
                level, got = _levels(reference, alpha, q), output.codes.to(torch.float32) - 128
                layout = torch.channels_last if output.codes.is_contiguous(memory_format=torch.channels_last) \
                    else torch.contiguous_format
                level = level.contiguous(memory_format=layout)
                forced = QuantizedActivation((level + 128).to(torch.uint8), alpha, q, level.clone())
            else:  # a float output (a quantizer that feeds no integer conv): levels of its finest step
                if isinstance(module, BitSelector):
                    alpha, q = min(((m.alpha, m.q) for m in module.quantizers), key=lambda aq: float(aq[0] / aq[1]))
                else:
                    alpha, q = module.alpha, module.q
                level, got = _levels(reference, alpha, q), _levels(output, alpha, q)
                channels_last = output.is_contiguous(memory_format=torch.channels_last)
                forced = reference.contiguous(memory_format=torch.channels_last) if channels_last else reference
            diff = (level - got).abs()
            stats[name] = (diff.numel(), int((diff > 0).sum()), int(diff.max()))
            return forced

        return hook

    modules_fake, modules_int8 = dict(fake.named_modules()), dict(int8.named_modules())
    handles += [modules_fake[n].register_forward_hook(keep(n)) for n in names]
    try:
        with torch.no_grad():
            fake_out, fake_aux = fake(x, return_aux=True)
        handles += [modules_int8[n].register_forward_hook(force(n)) for n in names]
        with torch.no_grad():
            int8_out, int8_aux = int8(x, return_aux=True)
    finally:
        for handle in handles:
            handle.remove()
    return fake_out, fake_aux, int8_out, int8_aux, stats
