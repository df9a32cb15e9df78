"""IDN with CADyQ (docs/method.md#backbones): a fixed 8-bit feature block, 4 distillation blocks with 6 bit selectors each."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY

from cadyq_plugin.archs.cadyq_net import CADyQNet


class FBlock(nn.Module):
    """Feature extraction: ``A8 -> conv 3->C -> LReLU -> A8 -> conv C->C -> LReLU``, fixed W8A8 in the quantized
    modes (not counted in the average bit, counted in BitOPs at 8 bits)."""

    def __init__(self, quant, num_in_ch, num_feat, slope):
        super().__init__()
        self.quant1 = quant.fixed(8)
        self.conv1 = quant.conv(num_in_ch, num_feat, 3, padding=1, feed_from=self.quant1)
        self.quant2 = quant.fixed(8)
        self.conv2 = quant.conv(num_feat, num_feat, 3, padding=1, feed_from=self.quant2)
        self.slope = slope

    def forward(self, x, record):
        h = F.leaky_relu(self.conv1(self.quant1(x, record)), self.slope)
        return F.leaky_relu(self.conv2(self.quant2(h, record)), self.slope)


class EnhancementUnit(nn.Module):
    """Three ``BS -> conv -> LReLU`` stages, the middle conv grouped: ``c0 -> c1 -> c2 (groups) -> c3``."""

    def __init__(self, quant, channels, groups, slope):
        super().__init__()
        c0, c1, c2, c3 = channels
        self.quant1 = quant.dynamic(c0)
        self.conv1 = quant.conv(c0, c1, 3, padding=1, feed_from=self.quant1)
        self.quant2 = quant.dynamic(c1)
        self.conv2 = quant.conv(c1, c2, 3, padding=1, groups=groups, feed_from=self.quant2)
        self.quant3 = quant.dynamic(c2)
        self.conv3 = quant.conv(c2, c3, 3, padding=1, feed_from=self.quant3)
        self.slope = slope

    def forward(self, x, record):
        for quant, conv in ((self.quant1, self.conv1), (self.quant2, self.conv2), (self.quant3, self.conv3)):
            x = F.leaky_relu(conv(quant(x, record)), self.slope)
        return x


class DBlock(nn.Module):
    """Information distillation block: ``top`` (C -> C-d -> C-2d -> C), split into ``C - C/s`` channels for
    ``bottom`` (C-d -> C -> C-d -> C+d, block feature f) and ``C/s`` kept; ``f + concat(input, kept)`` is
    compressed back to C by a full-precision 1x1 conv."""

    def __init__(self, quant, num_feat, d, s, groups, slope):
        super().__init__()
        self.split = num_feat - num_feat // s
        self.top = EnhancementUnit(quant, (num_feat, num_feat - d, num_feat - 2 * d, num_feat), groups, slope)
        self.bottom = EnhancementUnit(quant, (self.split, num_feat, num_feat - d, num_feat + d), groups, slope)
        self.compress = nn.Conv2d(num_feat + d, num_feat, 1)

    def forward(self, x, record):
        top = self.top(x, record)
        feat = self.bottom(top[:, :self.split], record)
        return self.compress(feat + torch.cat([x, top[:, self.split:]], dim=1)), feat


@ARCH_REGISTRY.register()
class IDN_CADyQ(CADyQNet):
    """IDN x4 (64 features, d=16, s=4, 4 DBlocks) in ``fp``, ``pams`` or ``cadyq`` mode.

    Input and output are RGB in [0, 1]; the network works on 0..255 internally, without mean shift. The tail is
    a full-precision (``fp_layer_bits``: fixed-bit) transposed conv (kernel 17, stride ``upscale``, padding 8,
    output padding ``upscale - 1``, which makes the output exactly ``upscale`` times the input) added to the
    bicubic-upsampled input.

    Args:
        d (int): channels the enhancement units remove and add (16).
        s (int): the top unit's output keeps ``num_feat / s`` channels for the skip (4).
        groups (int): groups of the middle conv of each enhancement unit (4).
        slope (float): LeakyReLU negative slope (0.05).
    """

    def __init__(self,
                 num_in_ch=3,
                 num_out_ch=3,
                 num_feat=64,
                 num_block=4,
                 d=16,
                 s=4,
                 groups=4,
                 slope=0.05,
                 upscale=4,
                 img_range=255.0,
                 quant_mode='cadyq',
                 w_bits=8,
                 a_bits=8,
                 bits=(4, 6, 8),
                 calib_iters=1000,
                 grad_scale=1e3,
                 backend='fake',
                 fp_layer_bits=None):
        super().__init__(upscale, quant_mode, w_bits, a_bits, bits, calib_iters, grad_scale, backend, fp_layer_bits)
        if num_feat % s or num_feat // s != d:
            raise ValueError(f'IDN needs num_feat / s == d (the kept slice fills the bottom unit\'s extra d '
                             f'channels), got num_feat={num_feat}, d={d}, s={s}')
        self.img_range = img_range
        self.fblock = FBlock(self.quant, num_in_ch, num_feat, slope)
        self.body = nn.ModuleList(DBlock(self.quant, num_feat, d, s, groups, slope) for _ in range(num_block))
        self.deconv = nn.ConvTranspose2d(
            num_feat, num_out_ch, 17, stride=upscale, padding=8, output_padding=upscale - 1)
        self.finish_build()

    def forward_features(self, x, record):
        x = x * self.img_range
        h, feats = self.fblock(x, record), []
        for block in self.body:
            h, feat = block(h, record)
            feats.append(feat)
        bicubic = F.interpolate(x, scale_factor=self.upscale, mode='bicubic', align_corners=False)
        sr = self.deconv(h) + bicubic
        return sr / self.img_range, h, feats
