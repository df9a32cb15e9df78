"""Options are checked before any work starts: every problem named with file, key, value and what is expected."""
import copy
import glob
import os

import pytest

import cadyq_plugin  # noqa: F401  (compat shim before basicsr)
from cadyq_plugin.config_check import ConfigError, check_options
from cadyq_plugin.options import apply_force_yml, read_yml
from tiny_workspace import OPTIONS, run_cli

STAGE3 = os.path.join(OPTIONS, 'train_edsrbaseline_cadyq.yml')
STAGE1 = os.path.join(OPTIONS, 'train_edsrbaseline_fp.yml')
TEST = os.path.join(OPTIONS, 'test_edsrbaseline_cadyq_image.yml')


def opt_of(path):
    return read_yml(path)


def problems(opt, path=STAGE3, phase='train', **kwargs):
    """The problem lines of ``opt`` (checked without touching the file system unless asked)."""
    kwargs.setdefault('check_files', False)
    with pytest.raises(ConfigError) as info:
        check_options(opt, path, phase, **kwargs)
    message = str(info.value)
    assert repr(path) in message.splitlines()[0], 'the message names the file'
    return info.value.problems


def one_problem(opt, *fragments, **kwargs):
    found = problems(opt, **kwargs)
    assert len(found) == 1, found
    for fragment in fragments:
        assert fragment in found[0], (fragment, found[0])
    return found[0]


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(OPTIONS, '*.yml'))), ids=os.path.basename)
def test_every_options_file_of_the_repository_passes(path):
    check_options(read_yml(path), path, 'test' if os.path.basename(path).startswith('test') else 'train',
                  check_files=False)


def test_the_check_does_not_modify_the_options():
    opt = opt_of(STAGE3)
    before = copy.deepcopy(opt)
    opt['network_g']['bits'] = [8, 4]
    before['network_g']['bits'] = [8, 4]
    with pytest.raises(ConfigError):
        check_options(opt, STAGE3, check_files=False)
    assert opt == before


def test_unknown_arch_and_quant_mode():
    opt = opt_of(STAGE3)
    opt['network_g']['type'] = 'EDSR_CADYQ'
    one_problem(opt, "network_g.type = 'EDSR_CADYQ'", 'registered arch', 'EDSR_CADyQ')
    opt = opt_of(STAGE3)
    opt['network_g']['quant_mode'] = 'dynamic'
    one_problem(opt, "network_g.quant_mode = 'dynamic'", "['fp', 'pams', 'cadyq']")


def test_an_argument_the_arch_does_not_have():
    opt = opt_of(STAGE3)
    opt['network_g']['num_blocks'] = 8
    one_problem(opt, 'network_g.num_blocks = 8', 'not an argument of EDSR_CADyQ')


@pytest.mark.parametrize('bits', [[8, 6, 4], [4], [4, 6, 9], [1, 4], [4, 4, 8], [4, 6.5, 8], '4,6,8', [True, 8]])
def test_candidate_bits_must_be_a_sorted_list_of_at_least_two_integers_in_2_to_8(bits):
    opt = opt_of(STAGE3)
    opt['network_g']['bits'] = bits
    one_problem(opt, f'network_g.bits = {bits!r}', 'sorted list of at least 2 distinct integers in 2..8')


@pytest.mark.parametrize('bits', [[2, 8], [3, 4, 5, 6, 7, 8], [4, 8]])
def test_other_candidate_lists_are_fine(bits):
    opt = opt_of(STAGE3)
    opt['network_g']['bits'] = bits
    check_options(opt, STAGE3, check_files=False)


def test_a_distilling_stage_needs_a_teacher_and_its_weights():
    opt = opt_of(STAGE3)
    del opt['network_t']
    one_problem(opt, 'network_t is missing', 'train.kd_opt distils from a teacher')
    opt = opt_of(STAGE3)
    opt['path']['pretrain_network_t'] = None
    one_problem(opt, 'path.pretrain_network_t is missing', 'network_t is set')


@pytest.mark.parametrize('key, value, fragment', [
    ('type', 'CARN_CADyQ', "expected 'EDSR_CADyQ' like network_g"),
    ('upscale', 2, "the teacher must have the student's scale"),
    ('num_feat', 32, "the teacher must have the student's size"),
])
def test_teacher_and_student_must_be_the_same_backbone_and_scale(key, value, fragment):
    opt = opt_of(STAGE3)
    opt['network_t'][key] = value
    one_problem(opt, f'network_t.{key} = {value!r}', fragment)


def test_pretrained_checkpoints_must_exist(tmp_path):
    opt = opt_of(STAGE3)
    for phase in ('train', 'val'):  # real dataset folders so that only the checkpoints are missing
        for root in ('dataroot_gt', 'dataroot_lq'):
            folder = tmp_path / phase / root
            folder.mkdir(parents=True)
            (folder / 'meta_info.txt').write_text('')
            opt['datasets'][phase][root] = str(folder)
    found = problems(opt, check_files=True)
    assert len(found) == 2
    assert all('expected an existing checkpoint file' in p for p in found)
    assert found[0].startswith("path.pretrain_network_g = 'experiments/EDSR_pams_w8a8_x4/models/net_g_latest.pth'")
    assert found[1].startswith('path.pretrain_network_t = ')
    # resuming: BasicSR replaces pretrain_network_g by the resumed iteration's weights; the teacher is kept
    found = problems(opt, check_files=True, resuming=True)
    assert len(found) == 1 and found[0].startswith('path.pretrain_network_t')
    ckpt = tmp_path / 'pams.pth'
    ckpt.write_bytes(b'')
    opt['path']['pretrain_network_g'] = opt['path']['pretrain_network_t'] = str(ckpt)
    check_options(opt, STAGE3, check_files=True)


def test_missing_dataset_folders_are_named(tmp_path, monkeypatch):
    opt = opt_of(STAGE1)
    monkeypatch.chdir(tmp_path)  # a short path: long values are shortened in the message
    missing = 'mine/DIV2K_train_HR_sub.lmdb'  # not the default: the user may have prepared it elsewhere
    opt['datasets']['train']['dataroot_gt'] = missing
    found = problems(opt, path=STAGE1, check_files=True)
    assert any(p.startswith('datasets.train.dataroot_gt = ') and 'DIV2K_train_HR' in p and
               p.endswith('expected an existing folder (an LMDB folder)') for p in found), found
    lmdb_dir = tmp_path / 'gt.lmdb'
    lmdb_dir.mkdir()
    opt['datasets']['train']['dataroot_gt'] = str(lmdb_dir)
    found = problems(opt, path=STAGE1, check_files=True)
    assert any(p.startswith('datasets.train.dataroot_gt') and 'meta_info.txt' in p for p in found)


@pytest.mark.parametrize('patchwise, fragment', [
    ({'patch': 96, 'step': 100, 'batch': 4}, 'val.patchwise.step = 100: expected <= patch (96)'),
    ({'patch': 0, 'step': 0}, 'val.patchwise.patch = 0: expected a positive integer'),
    ({'patch': 96, 'step': 90, 'batch': 0}, 'val.patchwise.batch = 0'),
    ({'patch': 96.0, 'step': 90}, 'val.patchwise.patch = 96.0'),
    ({'patch': 96, 'step': 90, 'overlap': 6}, 'val.patchwise.overlap = 6: not a known key of this section'),
    ([96, 90], 'val.patchwise = [96, 90]'),
])
def test_patchwise_tiling_must_be_consistent(patchwise, fragment):
    opt = opt_of(STAGE3)
    opt['val']['patchwise'] = patchwise
    assert any(fragment in p for p in problems(opt)), fragment


def test_patchwise_margins_must_be_whole_hr_pixels():
    """docs/method.md#patch-wise-inference: each patch drops ``s = (P - S) / 2 * scale`` HR pixels per side. At x4 an odd ``P - S`` still
    gives whole pixels (the reference's int() is exact); at x3 it does not, and the crops would not be centred."""
    opt = opt_of(STAGE3)
    opt['val']['patchwise'] = {'patch': 96, 'step': 91, 'batch': 2}
    check_options(opt, STAGE3, check_files=False)  # (96 - 91) / 2 * 4 = 10 pixels
    for key in ('network_g', 'network_t'):
        opt['network_g' if key == 'network_g' else key]['upscale'] = 3
    opt['scale'] = 3
    one_problem(opt, 'val.patchwise.step = 91', '(patch - step) * scale even', '7.5 HR pixels')
    opt['val']['patchwise']['step'] = 90
    check_options(opt, STAGE3, check_files=False)


def test_metrics_the_model_or_mode_cannot_produce():
    opt = opt_of(STAGE3)
    opt['network_g']['quant_mode'] = 'fp'
    del opt['train']['bit_opt']  # (a bit loss in fp mode is a problem of its own, checked below)
    one_problem(opt, 'val.metrics.avg_bit.type = ', 'cannot be produced by network_g.quant_mode fp')
    opt = opt_of(STAGE1)  # stage 1 (CADyQSRModel, fp): BitOPs yes, FAB no
    opt['val']['metrics']['avg_bit'] = {'type': 'calculate_avg_bit'}
    opt['val']['metrics']['bitops'] = {'type': 'calculate_bitops'}
    one_problem(opt, 'val.metrics.avg_bit.type = ', 'cannot be produced by network_g.quant_mode fp', path=STAGE1)
    opt['model_type'] = 'SRModel'  # BasicSR's own model: neither metric
    found = problems(opt, path=STAGE1)
    assert len(found) == 2 and all("cannot be produced by model_type 'SRModel'" in p for p in found)
    opt = opt_of(STAGE3)
    opt['val']['metrics']['niqe_typo'] = {'type': 'calculate_nique'}
    one_problem(opt, "val.metrics.niqe_typo.type = 'calculate_nique'", 'registered metric')


def test_bitops_of_a_full_precision_network_is_allowed():
    """BitOPs of an fp network is its MAC count (docs/method.md#fab-and-bitops 'total FP' column): a meaningful number."""
    opt = opt_of(STAGE3)
    for key in ('network_g', 'network_t'):
        opt[key]['quant_mode'] = 'fp'
    del opt['train']['bit_opt']
    del opt['val']['metrics']['avg_bit']
    check_options(opt, STAGE3, check_files=False)


def test_bit_loss_and_distillation_need_the_cadyq_model_and_mode():
    opt = opt_of(STAGE3)
    opt['network_g']['quant_mode'] = 'pams'
    one_problem(opt, "train.bit_opt = 'BitLoss'", 'needs network_g.quant_mode cadyq')
    opt = opt_of(STAGE1)
    opt['train']['kd_opt'] = {'type': 'ATLoss'}
    one_problem(opt, "train.kd_opt = 'ATLoss'", "is ignored by model_type 'CADyQSRModel'", "use model_type "
                "'CADyQModel'", path=STAGE1)


def test_dataset_scale_must_match_the_network():
    opt = opt_of(STAGE3)
    opt['scale'] = 2
    found = problems(opt)
    assert 'scale = 2: expected 4 = network_g.upscale' in found[0]


def test_training_numbers():
    opt = opt_of(STAGE3)
    opt['datasets']['train']['type'] = opt['datasets']['val']['type'] = 'CADyQPairedImageDataset'
    opt['train']['max_bad_steps'] = 0
    opt['train']['total_iter'] = -5
    opt['datasets']['train']['gt_size'] = 190
    opt['datasets']['train']['on_bad_sample'] = 'ignore'
    opt['datasets']['val']['on_bad_sample'] = 'skip'
    opt['train']['optim_g']['type'] = 'Adamm'
    found = problems(opt)
    expected = ['train.max_bad_steps = 0', 'train.total_iter = -5', 'datasets.train.gt_size = 190: expected a '
                'multiple of scale 4', "datasets.train.on_bad_sample = 'ignore'", "datasets.val.on_bad_sample = "
                "'skip': expected 'raise'", "train.optim_g.type = 'Adamm'"]
    for fragment in expected:
        assert any(fragment in p for p in found), (fragment, found)
    assert len(found) == len(expected), found


def test_test_options_need_the_val_section_and_a_cpu_friendly_num_gpu():
    import torch
    opt = opt_of(TEST)
    del opt['val']['save_img']
    opt['num_gpu'] = torch.cuda.device_count() + 1
    found = problems(opt, path=TEST, phase='test')
    assert any(p.startswith('val.save_img is missing') for p in found)
    assert any(p.startswith(f'num_gpu = {torch.cuda.device_count() + 1}: expected at most') for p in found)


def test_force_yml_is_applied_like_basicsr(tmp_path):
    opt = apply_force_yml(opt_of(STAGE3), ['network_g:bits=[2,8]', 'train:total_iter=10'], STAGE3)
    assert opt['network_g']['bits'] == [2, 8] and opt['train']['total_iter'] == 10
    with pytest.raises(ConfigError, match='nosection is not a section'):
        apply_force_yml(opt_of(STAGE3), ['nosection:key=1'], STAGE3)


def test_cli_stops_before_any_work_with_the_message(tmp_path):
    """``basicsr train`` with a typo: exit status 1, the file, key, value and expectation on stderr, no
    traceback, and nothing created (no experiments/, tb_logger/ or results/ folder)."""
    bad = tmp_path / 'bad.yml'
    text = open(STAGE3).read().replace('quant_mode: cadyq', 'quant_mode: cadyqq', 1)
    bad.write_text(text)
    proc = run_cli(['train', '-opt', str(bad), '--force_yml', 'network_g:bits=[4,6,10]'], cwd=str(tmp_path))
    assert proc.returncode == 1
    assert 'Traceback' not in proc.stderr
    assert f"options file '{bad}'" in proc.stderr
    assert "network_g.quant_mode = 'cadyqq': expected one of ['fp', 'pams', 'cadyq']" in proc.stderr
    assert 'network_g.bits = [4, 6, 10]' in proc.stderr
    assert "path.pretrain_network_g = 'experiments/EDSR_pams_w8a8_x4/models/net_g_latest.pth'" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ['bad.yml']


@pytest.mark.parametrize('path', sorted(glob.glob(os.path.join(OPTIONS, '*.yml'))), ids=os.path.basename)
def test_every_options_file_reads_its_data_through_the_checked_dataset(path):
    """CADyQPairedImageDataset names the dataset and key of a bad sample and makes augmentation resumable."""
    types = {name: dataset.get('type') for name, dataset in read_yml(path)['datasets'].items()}
    assert set(types.values()) == {'CADyQPairedImageDataset'}, types


# ------------------------------------------------------------------------------------------------ typos
@pytest.mark.parametrize('entry, fragment', [
    ('train:total_iters=4', "train has no key 'total_iters' and none that reads it (did you mean 'total_iter'?)"),
    ('train.total_iter=4', "the top level has no key 'train.total_iter' and none that reads it (sections are "
                           'separated by ":", e.g. train:total_iter)'),
    ('datasets:train:use_hfilp=false', "datasets:train has no key 'use_hfilp' and none that reads it (did you mean "
                                       "'use_hflip'?)"),
    ('network_g:num_blocks=4', "network_g has no key 'num_blocks' and none that reads it (did you mean 'num_block'?)"),
    ('nosection:key=1', 'nosection is not a section of the options'),
])
def test_force_yml_refuses_paths_that_would_change_nothing(entry, fragment):
    with pytest.raises(ConfigError) as info:
        apply_force_yml(opt_of(STAGE3), [entry], STAGE3)
    assert any(fragment in p for p in info.value.problems), info.value.problems


def test_force_yml_accepts_keys_that_are_read_when_present():
    opt = apply_force_yml(opt_of(STAGE3), ['train:ema_decay=0.999', 'val:patchwise=~', 'network_g:grad_scale=10',
                                           'datasets:train:pin_memory=true', 'dist_params:backend=gloo'], STAGE3)
    assert opt['train']['ema_decay'] == 0.999 and opt['network_g']['grad_scale'] == 10
    assert opt['datasets']['train']['pin_memory'] is True and opt['dist_params']['backend'] == 'gloo'
    opt = apply_force_yml(opt_of(TEST), ['datasets:test_2=~'], TEST)
    assert 'test_2' not in opt['datasets'] and 'test_3' in opt['datasets']


def test_unknown_keys_of_the_plugin_sections_are_named_with_a_suggestion():
    opt = opt_of(STAGE3)
    opt['datasets']['train']['use_hfilp'] = opt['datasets']['train'].pop('use_hflip')
    opt['datasets']['train']['gt_sise'] = opt['datasets']['train'].pop('gt_size')
    opt['train']['bit_opt']['loss_wieght'] = 1e-4
    opt['train']['kd_opt']['feature_weigth'] = 0.1
    opt['val']['patchwise'] = {'patch': 96, 'stpe': 90}
    found = problems(opt)
    for fragment in ["datasets.train.use_hfilp = True: not a known key of this section (did you mean 'use_hflip'?)",
                     "datasets.train.gt_sise = 192: not a known key of this section (did you mean 'gt_size'?)",
                     "train.bit_opt.loss_wieght = 0.0001: not a known key of this section (did you mean "
                     "'loss_weight'?)", "train.kd_opt.feature_weigth = 0.1: not a known key",
                     "val.patchwise.stpe = 90: not a known key of this section (did you mean 'step'?)"]:
        assert any(fragment in p for p in found), (fragment, found)
    assert not any('use_hflip is missing' in p or 'gt_size is missing' in p for p in found), \
        'a misspelt required key is named by the misspelling, not as missing'


def test_stock_sections_stay_as_permissive_as_basicsr():
    opt = opt_of(STAGE1)
    opt['model_type'] = 'SRModel'
    opt['datasets']['train']['type'] = opt['datasets']['val']['type'] = 'SingleImageDataset'
    opt['datasets']['train']['whatever'] = 1  # a dataset of BasicSR's reads what it reads
    opt['train']['pixel_opt']['custom'] = 1  # L1Loss would fail at build time, but that is BasicSR's message
    check_options(opt, STAGE1, check_files=False)


def test_a_misspelt_arch_argument_gets_a_suggestion():
    opt = opt_of(STAGE3)
    opt['network_g']['num_blok'] = 8
    one_problem(opt, 'network_g.num_blok = 8', "not an argument of EDSR_CADyQ (did you mean 'num_block'?)")
