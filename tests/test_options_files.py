"""The shipped options files cannot drift apart: within each family (a stage's training files, the image-wise and
the patch-wise test files) the blocks meant to be shared are identical, and what may differ per backbone is only
the network, its checkpoint paths and the reference schedule of that backbone."""
import copy
import glob
import os
import re

import pytest
import yaml

OPTIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'options')
CADYQ_ARCHS = ('edsrbaseline', 'carn', 'idn', 'srresnet')  # the plugin's own <Backbone>_CADyQ archs
WRAPPED = ('msrresnet', 'rrdbnet', 'rcan', 'swinir')  # BasicSR archs under CADyQWrapper (stage 1: BasicSR's SRModel)
BACKBONES = CADYQ_ARCHS + WRAPPED
FAMILY = re.compile(r'^(train|test)_(?P<backbone>[a-z]+)_(?P<kind>fp|pams|cadyq|cadyq_image|cadyq_patch)\.yml$')
# Per backbone, what a training file may set differently from its family: the original's schedules (CARN trains
# twice as long, halves its lr later, and its selectors learn at 1e-3; see docs/method.md#training).
LONG_SCHEDULE = {'carn'}
SHARED_TOP_LEVEL = ('model_type', 'scale', 'num_gpu', 'manual_seed', 'datasets', 'val', 'logger', 'dist_params')


def _families():
    families = {}
    for path in sorted(glob.glob(os.path.join(OPTIONS, '*.yml'))):
        match = FAMILY.match(os.path.basename(path))
        assert match, f'{os.path.basename(path)}: an options file is named <train|test>_<backbone>_<kind>.yml'
        families.setdefault((match.group(1), match['kind']), {})[match['backbone']] = path
    return families


FAMILIES = _families()


def _load(path):
    with open(path) as f:
        return yaml.safe_load(f)


def test_every_file_names_its_backbone():
    """Every options file's name says its backbone, and every family has every backbone."""
    assert set(FAMILIES) == {('train', 'fp'), ('train', 'pams'), ('train', 'cadyq'), ('test', 'cadyq_image'),
                             ('test', 'cadyq_patch')}
    for family, members in FAMILIES.items():
        assert set(members) == set(BACKBONES), family


def _normalised_train(backbone, train, stage):
    """The training section with the backbone's own schedule checked against the reference and then removed."""
    train = copy.deepcopy(train)
    long = backbone in LONG_SCHEDULE
    if stage == 'fp':  # BasicSR's EDSR recipe: halve at 2/3 of the run
        expected = ([400000], 600000) if long else ([200000], 300000)
    else:  # the original's StepLR(150 / 400 epochs of 1000 iterations), stepped at the start of each epoch
        expected = ([399000], 600000) if long else ([149000, 299000], 300000)
    assert (train['scheduler'].pop('milestones'), train.pop('total_iter')) == expected, backbone
    if stage == 'cadyq':
        assert train['optim_selector'].pop('lr') == (1e-3 if long else 1e-4), backbone
    return train


@pytest.mark.parametrize('group', [CADYQ_ARCHS, WRAPPED], ids=['cadyq_archs', 'wrapped'])
@pytest.mark.parametrize('stage', ['fp', 'pams', 'cadyq'])
def test_training_files_share_their_blocks(stage, group):
    files = FAMILIES[('train', stage)]
    reference_name = group[0]
    reference = _load(files[reference_name])
    for backbone in group:
        opt = _load(files[backbone])
        name = os.path.basename(files[backbone])
        if stage == 'fp' and group is WRAPPED:  # stage 1 of a wrapped arch is BasicSR's own model for it
            assert opt.pop('model_type') == ('SwinIRModel' if backbone == 'swinir' else 'SRModel'), name
            reference = dict(reference, model_type=None)
        for key in SHARED_TOP_LEVEL:
            assert opt.get(key) == reference.get(key), f'{name}: {key} differs from {reference_name}'
        assert (_normalised_train(backbone, opt['train'], stage) ==
                _normalised_train(reference_name, reference['train'], stage)), name


@pytest.mark.parametrize('kind', ['cadyq_image', 'cadyq_patch'])
def test_test_files_share_their_blocks(kind):
    files = FAMILIES[('test', kind)]
    reference = _load(files['edsrbaseline'])
    for backbone, path in files.items():
        opt = _load(path)
        for key in SHARED_TOP_LEVEL:
            assert opt.get(key) == reference.get(key), f'{os.path.basename(path)}: {key} differs from EDSR-baseline'


def test_each_test_file_tests_its_stage_three_network():
    """A test file's network is the CADyQ network of the same backbone's stage-3 training file (the arguments it
    gives have the training file's values; it may leave out training-only ones), and it loads that file's final
    checkpoint."""
    for backbone in BACKBONES:
        train = _load(FAMILIES[('train', 'cadyq')][backbone])
        for kind in ('cadyq_image', 'cadyq_patch'):
            test = _load(FAMILIES[('test', kind)][backbone])
            differing = {k for k in test['network_g'] if test['network_g'][k] != train['network_g'].get(k)}
            assert not differing, (backbone, kind, differing)
            assert test['path']['pretrain_network_g'] == f'experiments/{train["name"]}/models/net_g_latest.pth'
