"""SRResNet with CADyQ (docs/method.md#backbones): 16 residual blocks with BatchNorm, two bit selectors per block."""
import torch.nn as nn
from basicsr.utils.registry import ARCH_REGISTRY

from cadyq_plugin.archs.arch_util import upsample_factors
from cadyq_plugin.archs.cadyq_net import CADyQNet


class SRResBlock(nn.Module):
    """``skip = BS1(x); h = BS2(act(bn1(conv1(x)))); out = bn2(conv2(h)) * res_scale + skip``.

    As in the reference, ``conv1`` sees the unquantized ``x``: ``BS1`` only quantizes the skip. For BitOPs
    ``conv1`` is nevertheless counted at ``BS1``'s bit-width (the paper's accounting); with ``fp_layer_bits`` its
    input gets a fixed quantizer of its own (``conv1.quant_in``) and it is counted at that bit-width. ``act`` is the
    network's single PReLU, shared with the head and every other block.
    """

    def __init__(self, quant, num_feat, res_scale, act):
        super().__init__()
        self.quant_in = quant.dynamic(num_feat)
        self.conv1 = quant.conv_on_raw_input(num_feat, num_feat, 3, counted_as=self.quant_in, padding=1)
        self.bn1 = nn.BatchNorm2d(num_feat)
        self.act = act
        self.quant_mid = quant.dynamic(num_feat)
        self.conv2 = quant.conv(num_feat, num_feat, 3, padding=1, feed_from=self.quant_mid)
        self.bn2 = nn.BatchNorm2d(num_feat)
        self.res_scale = res_scale

    def forward(self, x, record):
        skip = self.quant_in(x, record)
        h = self.quant_mid(self.act(self.bn1(self.conv1(x))), record)
        feat = self.conv2(h)
        return self.bn2(feat) * self.res_scale + skip, feat


def prelu_upsampler(num_feat, scale):
    """``conv (no bias) -> PixelShuffle -> PReLU`` per step, each with its own PReLU; the convs sit at
    ``upsample.0`` (and ``upsample.3``, ...) like the original's ``tail.0``."""
    layers = []
    for factor in upsample_factors(scale):
        layers += [nn.Conv2d(num_feat, factor * factor * num_feat, 3, 1, 1, bias=False), nn.PixelShuffle(factor),
                   nn.PReLU()]
    return nn.Sequential(*layers)


@ARCH_REGISTRY.register()
class SRResNet_CADyQ(CADyQNet):
    """SRResNet x4 (64 features, 16 blocks with BatchNorm) in ``fp``, ``pams`` or ``cadyq`` mode.

    Input and output are RGB in [0, 1]; the network works on 0..255 internally, without mean shift. One PReLU
    (``act``) is shared by the head and every block (reference behaviour). Head (9x9), body-final conv + BN,
    upsampler and 9x9 exit conv stay full precision (``fp_layer_bits``: fixed-bit); only the block convs have a bias
    (see the converter for the original FP layout, whose block convs have none). BatchNorm follows the module's
    train/eval mode.
    """

    def __init__(self,
                 num_in_ch=3,
                 num_out_ch=3,
                 num_feat=64,
                 num_block=16,
                 upscale=4,
                 res_scale=1.0,
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
        self.img_range = img_range
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 9, 1, 4, bias=False)
        self.act = nn.PReLU()
        self.body = nn.ModuleList(SRResBlock(self.quant, num_feat, res_scale, self.act) for _ in range(num_block))
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1, bias=False)
        self.bn_after_body = nn.BatchNorm2d(num_feat)
        self.upsample = prelu_upsampler(num_feat, upscale)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 9, 1, 4, bias=False)
        self.finish_build()

    def forward_features(self, x, record):
        head = self.act(self.conv_first(x * self.img_range))
        h, feats = head, []
        for block in self.body:
            h, feat = block(h, record)
            feats.append(feat)
        body = self.bn_after_body(self.conv_after_body(h)) + head
        sr = self.conv_last(self.upsample(body))
        return sr / self.img_range, body, feats
