"""Original CARN / IDN / SRResNet checkpoints (the key layouts of tests/data/reference/state_dict_keys) converted into
the plugin's archs, for every stage; wrong stages, backbones and values refused with the differences listed."""
import os
import re

import pytest
import torch

import cadyq_plugin  # noqa: F401  (compat shim before anything imports basicsr)
from basicsr.utils.registry import ARCH_REGISTRY
from cadyq_plugin.checkpoint import CheckpointError
from cadyq_plugin.convert import convert_state_dict

build_arch = ARCH_REGISTRY.get  # an arch class by its registered name
KEYS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'reference', 'state_dict_keys')
BACKBONES = {'carn': 'CARN_CADyQ', 'idn': 'IDN_CADyQ', 'srresnet': 'SRResNet_CADyQ'}
STAGES = ('fp', 'pams', 'cadyq')
CARN_MEAN = torch.tensor([0.4488, 0.4371, 0.4040])


def read_keys(backbone, stage):
    entries = []
    with open(os.path.join(KEYS, f'{backbone}_{stage}_keys.txt')) as f:
        for line in f:
            key, shape = re.fullmatch(r'(\S+) \(([\d, ]*)\)', line.strip()).groups()
            entries.append((key, tuple(int(d) for d in shape.replace(' ', '').split(',') if d)))
    return entries


def fake_original(backbone, stage, seed=0):
    """Random tensors of the listed shapes; frozen mean shifts and the shared PReLU hold consistent values."""
    gen = torch.Generator().manual_seed(seed)
    state = {key: torch.rand(shape, generator=gen) for key, shape in read_keys(backbone, stage)}
    for key in state:
        if key.endswith('shifter.weight'):
            state[key] = torch.eye(3).view(3, 3, 1, 1)
        elif key.endswith('shifter.bias'):
            state[key] = -CARN_MEAN if key.startswith('sub_mean') else CARN_MEAN.clone()
        elif re.fullmatch(r'body\.\d+\.act\.weight', key):
            state[key] = state['head.1.weight'].clone()  # one PReLU module under several names
    return state


@pytest.mark.parametrize('stage', STAGES)
@pytest.mark.parametrize('backbone', sorted(BACKBONES))
def test_original_layout_converts_and_loads_strictly(backbone, stage):
    arch = BACKBONES[backbone]
    net = build_arch(arch)(quant_mode=stage)
    state = fake_original(backbone, stage)
    converted, layout = convert_state_dict(state, net, arch, stage, 4)
    assert layout == 'original'
    net.load_state_dict(converted, strict=True)
    # every converted value comes from the original (or is a documented zero bias)
    originals = {id(v) for v in state.values()}
    values = {tuple(v.flatten()[:4].tolist()) for v in state.values() if v.numel()}
    for key, value in converted.items():
        if backbone == 'srresnet' and stage == 'fp' and re.fullmatch(r'body\.\d+\.conv[12]\.bias', key):
            assert torch.equal(value, torch.zeros(64))
        elif value.numel():
            assert id(value) not in originals  # cloned
            assert tuple(value.flatten()[:4].tolist()) in values, key


def test_known_mappings():
    state = fake_original('carn', 'cadyq')
    net = build_arch('CARN_CADyQ')()
    converted, _ = convert_state_dict(state, net, 'CARN_CADyQ', 'cadyq', 4)
    assert torch.equal(converted['body.1.blocks.2.conv2.weight'], state['b2.b3.body.4.weight'])
    assert torch.equal(converted['body.2.blocks.0.quant_mid.quantizers.2.alpha'],
                       state['b3.b1.body.3.quant_bit3.alpha'])
    assert torch.equal(converted['body.0.fusions.1.weight'], state['b1.c2.body.0.weight'])
    assert torch.equal(converted['fusions.2.weight'], state['c3.body.0.weight'])
    assert torch.equal(converted['upsample.3.weight'], state['upsample.up4.body.3.weight'])
    assert torch.equal(converted['conv_first.weight'], state['entry.weight'])

    state = fake_original('idn', 'cadyq')
    converted, _ = convert_state_dict(state, build_arch('IDN_CADyQ')(), 'IDN_CADyQ', 'cadyq', 4)
    assert torch.equal(converted['body.3.bottom.conv2.weight'], state['dblocks.3.enhancement_bottom.4.weight'])
    assert torch.equal(converted['body.0.top.quant3.fc.weight'],
                       state['dblocks.0.enhancement_top.6.net_small.0.weight'])
    assert torch.equal(converted['fblock.quant2.alpha'], state['fblock.module.3.alpha'])

    state = fake_original('srresnet', 'pams')
    net = build_arch('SRResNet_CADyQ')(quant_mode='pams')
    converted, _ = convert_state_dict(state, net, 'SRResNet_CADyQ', 'pams', 4)
    assert torch.equal(converted['body.5.quant_in.alpha'], state['body.5.quant_act1.alpha'])
    assert torch.equal(converted['body.5.quant_mid.alpha'], state['body.5.quant_act2.alpha'])
    assert torch.equal(converted['conv_after_body.weight'], state['body.16.weight'])
    assert torch.equal(converted['bn_after_body.running_var'], state['body.17.running_var'])
    assert torch.equal(converted['upsample.5.weight'], state['tail.0.5.weight'])
    assert torch.equal(converted['conv_last.weight'], state['tail.1.weight'])


@pytest.mark.parametrize('scale', [2, 3])
def test_carn_keeps_only_the_requested_scale_branch(scale):
    state = fake_original('carn', 'fp')
    net = build_arch('CARN_CADyQ')(upscale=scale, quant_mode='fp')
    converted, _ = convert_state_dict(state, net, 'CARN_CADyQ', 'fp', scale)
    net.load_state_dict(converted, strict=True)
    assert torch.equal(converted['upsample.0.weight'], state[f'upsample.up{scale}.body.0.weight'])


@pytest.mark.parametrize('backbone', sorted(BACKBONES))
def test_wrong_stage_is_refused_with_the_differences(backbone):
    arch = BACKBONES[backbone]
    for stage, target in (('fp', 'pams'), ('pams', 'cadyq'), ('cadyq', 'pams'), ('pams', 'fp')):
        with pytest.raises(CheckpointError) as err:
            convert_state_dict(fake_original(backbone, stage), build_arch(arch)(quant_mode=target), arch, target,
                               4)
        message = str(err.value)
        assert f'quant_mode={target}' in message
        assert 'missing key' in message or 'unexpected key' in message
        assert len(message.splitlines()) > 5


def test_wrong_backbone_is_refused():
    for backbone, arch in (('carn', 'IDN_CADyQ'), ('idn', 'SRResNet_CADyQ'), ('srresnet', 'CARN_CADyQ')):
        with pytest.raises(CheckpointError, match='not a known'):
            convert_state_dict(fake_original(backbone, 'fp'), build_arch(arch)(quant_mode='fp'), arch, 'fp', 4)
    with pytest.raises(CheckpointError) as err:  # EDSR and SRResNet share the head.0 marker: the keys differ
        convert_state_dict(fake_original('srresnet', 'fp'), build_arch('EDSR_CADyQ')(quant_mode='fp'), 'EDSR_CADyQ',
                           'fp', 4)
    assert 'unexpected key' in str(err.value)


def test_inconsistent_values_are_refused():
    state = fake_original('carn', 'fp')
    state['sub_mean.shifter.bias'] = -CARN_MEAN * 255  # EDSR's scale, not what CARN subtracts
    with pytest.raises(CheckpointError, match='sub_mean.shifter.bias is not the mean shift'):
        convert_state_dict(state, build_arch('CARN_CADyQ')(quant_mode='fp'), 'CARN_CADyQ', 'fp', 4)

    state = fake_original('srresnet', 'cadyq')
    state['body.7.act.weight'] = state['head.1.weight'] + 1  # the one shared PReLU cannot hold two values
    with pytest.raises(CheckpointError, match='shared tensor'):
        convert_state_dict(state, build_arch('SRResNet_CADyQ')(), 'SRResNet_CADyQ', 'cadyq', 4)
