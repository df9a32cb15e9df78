"""CADyQWrapper options that cannot work stop at build / config-check time with the option, its value and why."""
import copy
import os

import pytest
import torch
import torch.nn as nn

import cadyq_plugin  # noqa: F401  (compat shim before anything imports basicsr)
from basicsr.utils.registry import ARCH_REGISTRY
from cadyq_plugin.archs import CADyQWrapper
from cadyq_plugin.archs.wrapper_arch import WrapperConfigError
from cadyq_plugin.config_check import ConfigError, check_options
from cadyq_plugin.options import read_yml
from cadyq_plugin.quant import QConv2d
from tiny_workspace import OPTIONS


class _Block(nn.Module):

    def __init__(self, num_feat):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)

    def forward(self, x):
        return x + self.conv2(self.relu(self.conv1(x)))


class WrapperTestNet(nn.Module):
    """A user's own network with the traps the checks must catch: a conv run twice, a conv never run, a linear on
    tokens, an in-place skip (``res += head``) and no preset."""

    def __init__(self, num_feat=8, upscale=2):
        super().__init__()
        self.conv_first = nn.Conv2d(3, num_feat, 3, 1, 1)
        self.body = nn.Sequential(_Block(num_feat), _Block(num_feat))
        self.reused = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.unused = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.token_mix = nn.Linear(num_feat, num_feat)
        self.conv_after_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.upsample = nn.Sequential(nn.Conv2d(num_feat, 3 * upscale**2, 3, 1, 1), nn.PixelShuffle(upscale))

    def forward(self, x):
        head = self.conv_first(x)
        h = self.reused(self.reused(self.body(head)))
        b, c, height, width = h.shape
        h = self.token_mix(h.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, height, width)
        res = self.conv_after_body(h)
        res += head
        return self.upsample(res)


if 'WrapperTestNet' not in ARCH_REGISTRY:
    ARCH_REGISTRY.register(WrapperTestNet)

OWN = {'type': 'WrapperTestNet'}
GOOD = dict(backbone=OWN, quantize=['body.*.conv1', 'body.*.conv2'], features=['body.*.conv2'],
            body={'input': 'upsample'})


def problems_of(**options):
    with pytest.raises(WrapperConfigError) as info:
        CADyQWrapper(**options)
    return info.value.problems


def one_problem(*fragments, **options):
    found = problems_of(**options)
    assert len(found) == 1, found
    for fragment in fragments:
        assert fragment in found[0], (fragment, found[0])
    return found[0]


def test_a_users_network_by_patterns_alone():
    """No preset: every quantized conv gets a selector on its input by default; names are the backbone's."""
    net = CADyQWrapper(**GOOD).eval()
    assert net.n_selectors == 4 and net.upscale == 2
    assert isinstance(net.body[0].conv1, QConv2d) and net.body[0].conv1.input_quantizer is net.body[0].conv1.quant_in
    assert not isinstance(net.conv_first, QConv2d)
    with torch.no_grad():
        sr, aux = net(torch.rand(2, 3, 6, 5), return_aux=True)
    assert sr.shape == (2, 3, 12, 10) and aux['bits'].shape == (2, 4) and len(aux['feats']) == 2
    assert aux['body'].shape == (2, 8, 6, 5)


def test_a_network_without_preset_needs_its_patterns():
    found = problems_of(backbone=OWN)
    assert any(p.startswith('quantize is missing: WrapperTestNet has no default placement') for p in found)
    assert any(p.startswith('body is missing') for p in found)


def test_a_pattern_that_matches_nothing_names_similar_modules():
    line = one_problem("quantize[1] = 'body.*.conv9': matches no module of WrapperTestNet; modules like",
                       **dict(GOOD, quantize=['body.*.conv1', 'body.*.conv9']))
    assert "'body.0.conv1'" in line or "'body.1.conv1'" in line


def test_a_pattern_that_matches_a_module_that_is_not_a_conv():
    one_problem("quantize[0] = 'body.*.relu': matches body.0.relu (ReLU), not an nn.Conv2d",
                **dict(GOOD, quantize=['body.*.relu']))
    one_problem("quantize[0] = 'token_mix'", 'not an nn.Conv2d', **dict(GOOD, quantize=['token_mix']))


def test_a_double_star_pattern_takes_the_convs_it_matches_and_keep_fp_excludes():
    net = CADyQWrapper(**dict(GOOD, quantize=['body.**'], keep_fp=['body.1']))
    quantized = sorted(n for n, m in net.named_modules() if isinstance(m, QConv2d))
    assert quantized == ['body.0.conv1', 'body.0.conv2']
    one_problem("keep_fp[0] = 'tail'", 'matches no module', **dict(GOOD, keep_fp=['tail']))
    one_problem("quantize[0] = 'body.1.conv1'", 'only modules that keep_fp keeps',
                **dict(GOOD, quantize=['body.1.conv1'], keep_fp=['body.1']))


@pytest.mark.parametrize('backbone, fragment', [
    ({'type': 'EDSRR'}, "backbone.type = 'EDSRR': not a registered arch; registered archs like it: ['EDSR'"),
    ({'type': 'EDSR_CADyQ'}, "backbone.type = 'EDSR_CADyQ': already a CADyQ arch"),
    ({'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3, 'num_blocks': 4}, 'EDSR cannot be built from these '
     'arguments (TypeError'),
    ('EDSR', "backbone = 'EDSR': expected a section with the type of a registered arch"),
])
def test_a_backbone_that_cannot_be_built(backbone, fragment):
    one_problem(fragment, backbone=backbone)


def test_a_feature_pattern_that_never_fires_or_is_not_a_feature_map():
    one_problem('features[0]: unused never runs in a forward pass of WrapperTestNet',
                **dict(GOOD, features=['unused']))
    one_problem('features[0]: the feature of token_mix is a 3-D tensor (1, 256, 8), not a [B, C, H, W] feature map',
                **dict(GOOD, features=['token_mix']))


def test_quantizer_places_that_cannot_work():
    one_problem('quantize[0]: reused runs 2 times per forward pass', **dict(GOOD, quantize=['reused']))
    one_problem('act_quant[0]: the quantized output of conv_after_body is modified in place later in the forward '
                'pass of WrapperTestNet (e.g. res += x)',
                **dict(GOOD, act_quant=[{'output': 'conv_after_body'}, 'body.*.conv1', 'body.*.conv2']))
    one_problem('quantize[0]: the input of body.0.conv1 comes from no activation quantizer',
                "{input: 'body.0.conv1'}", **dict(GOOD, quantize=['body.0.conv1', 'body.0.conv2'],
                                                   act_quant=['body.0.conv2']))


@pytest.mark.parametrize('entry, fragment', [
    ({'input': 'body.*', 'name': 'body.quant'}, "act_quant[0].name = 'body.quant': expected a module name with the "
     "wildcards of 'body.*' (1)"),
    ({'input': 'body.*', 'name': 'body.*'}, 'body.0: body is an Sequential, which would run the quantizer as one of '
     'its layers'),
    ({'input': 'body.*', 'name': 'body.*.conv1'}, "body.0.conv1: body.0 already has an attribute 'conv1'"),
    ({'input': 'body.*', 'fixed': 16}, "act_quant[0].fixed = 16: expected an integer in 2..8"),
    ({'input': 'body.*', 'output': 'body.*'}, 'act_quant[0] = '),
    ({'inputs': 'body.*'}, 'act_quant[0] = '),
])
def test_bad_act_quant_entries(entry, fragment):
    found = problems_of(**dict(GOOD, act_quant=[entry, 'body.*.conv1', 'body.*.conv2']))
    assert any(fragment in p for p in found), found


def test_scale_backend_and_pad_to_are_checked():
    one_problem('upscale = 3: expected 2 like the backbone (WrapperTestNet)', **dict(GOOD, upscale=3))
    one_problem("backend = 'vulkan': expected one of ['fake', 'int8']", **dict(GOOD, backend='vulkan'))
    one_problem('pad_to = 0: expected a positive integer', **dict(GOOD, pad_to=0))


def test_the_config_check_names_the_network_section_before_any_work():
    path = os.path.join(OPTIONS, 'train_rcan_cadyq.yml')
    opt = read_yml(path)
    for key in ('network_g', 'network_t'):
        opt[key]['backbone'].update(num_feat=16, num_group=2, num_block=2)
    check_options(copy.deepcopy(opt), path, check_files=False)
    opt['network_g']['quantize'] = ['body.*.residual_group.*.rcab.9']
    opt['network_t']['backbone']['type'] = 'RCAM'
    with pytest.raises(ConfigError) as info:
        check_options(opt, path, check_files=False)
    found = info.value.problems
    assert any(p.startswith("network_g.quantize[0] = 'body.*.residual_group.*.rcab.9': matches no module of RCAN")
               for p in found), found
    assert any(p.startswith("network_t.backbone.type = 'RCAM': not a registered arch") for p in found), found
    assert not any('upscale' in p for p in found if p.startswith('network_g')), found
