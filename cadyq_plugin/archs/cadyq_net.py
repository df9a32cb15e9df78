"""What every CADyQ architecture shares: the quantization mode, the bit record of a forward pass and the
``forward(x, return_aux)`` contract (docs/workflow.md#architectures)."""
import torch
import torch.nn as nn

from cadyq_plugin.quant import ActQuantFactory, BitRecord, assign_selector_indices, image_gradient_feature, set_backend
from cadyq_plugin.quant.int8 import check_backend
from cadyq_plugin.quant.weight_quant import weights_quantized_together

# The arguments that set how a network is quantized, not its backbone: a teacher may differ from its student in them
QUANT_ARGS = ('quant_mode', 'w_bits', 'a_bits', 'bits', 'calib_iters', 'grad_scale', 'backend', 'fp_layer_bits')


class CADyQNet(nn.Module):
    """Base class of the ``<Backbone>_CADyQ`` archs.

    Subclasses build their layers with ``self.quant`` (an :class:`ActQuantFactory`), call
    :meth:`finish_build` at the end of ``__init__`` and implement ``forward_features(x, record)`` returning
    ``(sr, body, feats)`` for an input in [0, 1]. ``backend`` (``fake`` | ``int8``) is how the quantized convs
    run in eval mode (:func:`~cadyq_plugin.quant.set_backend`); training always runs the fake path.
    ``fp_layer_bits`` (quantized modes) quantizes the convs the subclass left in full precision at that fixed
    bit-width (:mod:`~cadyq_plugin.quant.fp_layers`); None keeps the reference network.
    """

    def __init__(self, upscale, quant_mode, w_bits, a_bits, bits, calib_iters, grad_scale, backend='fake',
                 fp_layer_bits=None):
        super().__init__()
        self.quant = ActQuantFactory(quant_mode, w_bits, a_bits, bits, fp_layer_bits)
        self.backend = check_backend(backend)
        if backend == 'int8' and quant_mode == 'fp':
            raise ValueError("backend 'int8' needs quant_mode 'pams' or 'cadyq' (an fp network has no quantized "
                             'convs to run in integers)')
        self.upscale = upscale
        self.quant_mode = quant_mode
        self.fp_layer_bits = fp_layer_bits
        self.calib_iters = int(calib_iters)
        self.grad_scale = float(grad_scale)
        self.n_selectors = 0

    def register_mean(self, rgb_mean, img_range):
        """The RGB mean on the network's internal scale, as a buffer ``mean`` that checkpoints do not store
        (the original's frozen mean-shift convs; the converter checks them against it)."""
        mean = torch.tensor(rgb_mean, dtype=torch.float32).view(1, 3, 1, 1) * img_range
        self.register_buffer('mean', mean, persistent=False)

    def finish_build(self):
        self.quant.quantize_fp_layers(self)
        self.n_selectors = assign_selector_indices(self)
        set_backend(self, self.backend)

    def forward(self, x, return_aux=False):
        """Return the SR image; with ``return_aux`` also a dict with ``body`` (the tail's input), ``feats``
        (block features), ``bits`` ([B, n_selectors]), ``weighted_bits`` ([B]) and ``selector_weighted_bits``
        ([B, n_selectors], its terms per selector)."""
        feature = image_gradient_feature(x, self.grad_scale) if self.n_selectors else None
        if self.backend == 'int8' and not self.training and not torch.compiler.is_exporting():
            x = x.contiguous(memory_format=torch.channels_last)  # oneDNN's int8 convs work and answer in it
        record = BitRecord(feature, x.shape[0], x.device)
        if torch.compiler.is_compiling() or not self.quant.quantized:
            sr, body, feats = self.forward_features(x, record)
        else:  # eager: all quantized weights in a few multi-tensor operations
            with weights_quantized_together(self.modules()):
                sr, body, feats = self.forward_features(x, record)
        if not return_aux:
            return sr
        selector_weighted = record.selector_weighted_bits()
        return sr, {'body': body, 'feats': feats, 'bits': record.bits(), 'weighted_bits': selector_weighted.sum(dim=1),
                    'selector_weighted_bits': selector_weighted}

    def forward_features(self, x, record):
        raise NotImplementedError
