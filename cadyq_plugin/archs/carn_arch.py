"""CARN with CADyQ (docs/method.md#backbones): 3 cascading blocks of 3 residual blocks, two bit selectors per residual block."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY

from cadyq_plugin.archs.arch_util import upsample_factors
from cadyq_plugin.archs.cadyq_net import CADyQNet


class CARNResBlock(nn.Module):
    """``r = conv2(BS2(relu(conv1(BS1(x))))); out = relu(r + x)``: the skip is the full-precision input."""

    def __init__(self, quant, num_feat):
        super().__init__()
        self.quant_in = quant.dynamic(num_feat)
        self.conv1 = quant.conv(num_feat, num_feat, 3, padding=1, feed_from=self.quant_in)
        self.quant_mid = quant.dynamic(num_feat)
        self.conv2 = quant.conv(num_feat, num_feat, 3, padding=1, feed_from=self.quant_mid)

    def forward(self, x, record):
        h = F.relu(self.conv1(self.quant_in(x, record)))
        feat = self.conv2(self.quant_mid(h, record))
        return F.relu(feat + x), feat


def cascade(x, units, fusions, step):
    """CARN's cascading connections: after unit ``i`` (``step(unit, h)`` runs it), a full-precision
    ``relu(1x1 conv)`` fuses the concatenation of ``x`` and every unit output so far."""
    cat = h = x
    for unit, fusion in zip(units, fusions):
        cat = torch.cat([cat, step(unit, h)], dim=1)
        h = F.relu(fusion(cat))
    return h


def cascade_fusions(num_feat, num_units):
    """The 1x1 fusion convs of a cascade: ``(i + 2) * num_feat -> num_feat`` after unit ``i``."""
    return nn.ModuleList(nn.Conv2d((i + 2) * num_feat, num_feat, 1) for i in range(num_units))


class CascadingBlock(nn.Module):
    """One CARN block: residual ``blocks`` joined by cascading 1x1 convs (``fusions``)."""

    def __init__(self, quant, num_feat, num_res_block):
        super().__init__()
        self.blocks = nn.ModuleList(CARNResBlock(quant, num_feat) for _ in range(num_res_block))
        self.fusions = cascade_fusions(num_feat, num_res_block)

    def forward(self, x, record, feats):

        def step(block, h):
            out, feat = block(h, record)
            feats.append(feat)
            return out

        return cascade(x, self.blocks, self.fusions, step)


def carn_upsampler(num_feat, scale):
    """CARN's upsampler for one scale: ``conv -> ReLU -> PixelShuffle`` per step; the convs sit at
    ``upsample.0`` (and ``upsample.3``, ...), like the original's ``upsample.up<scale>.body``."""
    layers = []
    for factor in upsample_factors(scale):
        layers += [nn.Conv2d(num_feat, factor * factor * num_feat, 3, 1, 1), nn.ReLU(inplace=True),
                   nn.PixelShuffle(factor)]
    return nn.Sequential(*layers)


@ARCH_REGISTRY.register()
class CARN_CADyQ(CADyQNet):
    """CARN x4 (64 features, 3 cascading blocks x 3 residual blocks) in ``fp``, ``pams`` or ``cadyq`` mode.

    Input and output are RGB in [0, 1], which is also the scale CARN works on (the mean shift subtracts
    ``rgb_mean`` itself, not x255). The original is multi-scale; only the ``upscale`` branch is built. Entry
    conv, all 1x1 cascading convs, upsampler and exit conv stay full precision (``fp_layer_bits``: fixed-bit);
    ``grad_scale`` defaults to the reference's 1.

    Args:
        num_block (int): cascading blocks (3).
        num_res_block (int): residual blocks per cascading block (3).
    """

    def __init__(self,
                 num_in_ch=3,
                 num_out_ch=3,
                 num_feat=64,
                 num_block=3,
                 num_res_block=3,
                 upscale=4,
                 img_range=1.0,
                 rgb_mean=(0.4488, 0.4371, 0.4040),
                 quant_mode='cadyq',
                 w_bits=8,
                 a_bits=8,
                 bits=(4, 6, 8),
                 calib_iters=1000,
                 grad_scale=1.0,
                 backend='fake',
                 fp_layer_bits=None):
        super().__init__(upscale, quant_mode, w_bits, a_bits, bits, calib_iters, grad_scale, backend, fp_layer_bits)
        self.img_range = img_range
        self.register_mean(rgb_mean, img_range)
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.ModuleList(CascadingBlock(self.quant, num_feat, num_res_block) for _ in range(num_block))
        self.fusions = cascade_fusions(num_feat, num_block)
        self.upsample = carn_upsampler(num_feat, upscale)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.finish_build()

    def forward_features(self, x, record):
        feats = []
        head = self.conv_first(x * self.img_range - self.mean)
        body = cascade(head, self.body, self.fusions, lambda block, h: block(h, record, feats))
        sr = self.conv_last(self.upsample(body)) + self.mean
        return sr / self.img_range, body, feats
