"""EDSR-baseline with CADyQ (docs/method.md#backbones): 16 residual blocks, two bit selectors per block."""
import torch.nn as nn
from basicsr.archs.arch_util import Upsample
from basicsr.utils.registry import ARCH_REGISTRY

from cadyq_plugin.archs.cadyq_net import CADyQNet


class QuantResBlock(nn.Module):
    """``xq = BS1(x); r = conv2(BS2(relu(conv1(xq)))); out = A8(r * res_scale) + xq``.

    The quantized input is the skip (reference behaviour). Layer names match BasicSR's ``ResidualBlockNoBN``
    (``conv1``, ``conv2``) so BasicSR EDSR checkpoints load into the fp mode.
    """

    def __init__(self, quant, num_feat, res_scale):
        super().__init__()
        self.quant_in = quant.dynamic(num_feat)
        self.conv1 = quant.conv(num_feat, num_feat, 3, padding=1, feed_from=self.quant_in)
        self.quant_mid = quant.dynamic(num_feat)
        self.conv2 = quant.conv(num_feat, num_feat, 3, padding=1, feed_from=self.quant_mid)
        self.quant_res = quant.fixed(8)
        self.relu = nn.ReLU(inplace=True)
        self.res_scale = res_scale

    def forward(self, x, record):
        xq = self.quant_in(x, record)
        h = self.quant_mid(self.relu(self.conv1(xq)), record)
        feat = self.conv2(h)
        return self.quant_res(feat * self.res_scale, record) + xq, feat


@ARCH_REGISTRY.register()
class EDSR_CADyQ(CADyQNet):
    """EDSR-baseline x4 (64 features, 16 blocks) in ``fp``, ``pams`` (W8A8) or ``cadyq`` mode.

    Input and output are RGB in [0, 1]; the network works on 0..255 internally like the reference. Head, body
    final conv, upsampler and last conv stay full precision (``fp_layer_bits``: fixed-bit, see
    :class:`~cadyq_plugin.archs.cadyq_net.CADyQNet`).
    """

    def __init__(self,
                 num_in_ch=3,
                 num_out_ch=3,
                 num_feat=64,
                 num_block=16,
                 upscale=4,
                 res_scale=1.0,
                 img_range=255.0,
                 rgb_mean=(0.4488, 0.4371, 0.4040),
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
        self.register_mean(rgb_mean, img_range)
        self.conv_first = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1)
        self.body = nn.ModuleList(QuantResBlock(self.quant, num_feat, res_scale) for _ in range(num_block))
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = Upsample(upscale, num_feat)  # BasicSR's: same layout and names as its EDSR
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)
        self.finish_build()

    def forward_features(self, x, record):
        head = self.conv_first(x * self.img_range - self.mean)
        h, feats = head, []
        for block in self.body:
            h, feat = block(h, record)
            feats.append(feat)
        body = self.conv_after_body(h) + head
        sr = self.conv_last(self.upsample(body)) + self.mean
        return sr / self.img_range, body, feats
