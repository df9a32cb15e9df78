"""The plugin's own train/test pipelines: BasicSR left untouched, stock BasicSR options and models, the original's
learning-rate schedule, one run per experiment folder, saves on SIGTERM/SIGINT, write failures, test sets that
are missing, exact resume for any dataset with workers, and checkpoint files as users expect."""
import glob
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from tiny_workspace import OPTIONS, REPO, logged_losses, make_tiny_pairs, run_cli, tiny_stage_options

import cadyq_plugin  # noqa: F401  (compat shim before basicsr)
from cadyq_plugin.config_check import ConfigError, check_options
from cadyq_plugin.options import read_yml
from cadyq_plugin.tools.derive_options import derive_options

TINY = {'network_g.num_feat': 16, 'network_g.num_block': 2, 'logger.use_tb_logger': False,
        'path.pretrain_network_g': None}
STOCK_OPTIONS = os.path.join(REPO, 'tests', 'data', 'basicsr_1.4.2_options.json')
# BasicSR 1.4.2's own options files that BasicSR itself cannot run, and why
STOCK_FAILS = {
    'options/test/RCAN/test_RCAN.yml': 'no val section: basicsr.test reads val.save_img and stops with a KeyError',
}


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return make_tiny_pairs(str(tmp_path_factory.mktemp('pipeline_data')))


def fp_options(workdir, data, total_iter, **overrides):
    return tiny_stage_options(str(workdir), data, 'train_edsrbaseline', 'fp', total_iter=total_iter,
                              **{**TINY, **overrides})


def experiment_dir(workdir, name='EDSR_fp_x4'):
    return os.path.join(str(workdir), 'experiments', name)


def load_params(path):
    return torch.load(path, map_location='cpu', weights_only=True)['params']


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def start(args, cwd):
    cmd = [sys.executable, '-m', 'cadyq_plugin.cli'] + list(args)
    return subprocess.Popen(cmd, cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, 'the run ended before the condition: ' + proc.stderr.read()[-3000:]
        assert time.time() < deadline, 'timed out'
        time.sleep(0.02)


# ============================================================================================ BasicSR untouched
NOT_PATCHED = textwrap.dedent('''
    import sys
    import cadyq_plugin
    import basicsr.test, basicsr.train
    from basicsr.models.base_model import BaseModel
    from basicsr.models.sr_model import SRModel
    from basicsr.utils import dist_util, options

    def snapshot():
        return {
            'train.load_resume_state': basicsr.train.load_resume_state, 'options.init_dist': options.init_dist,
            'dist_util.init_dist': dist_util.init_dist, 'train.make_exp_dirs': basicsr.train.make_exp_dirs,
            'test.make_exp_dirs': basicsr.test.make_exp_dirs, 'train.EnlargedSampler': basicsr.train.EnlargedSampler,
            'train.create_train_val_dataloader': basicsr.train.create_train_val_dataloader,
            **{f'BaseModel.{n}': BaseModel.__dict__[n] for n in ('model_to_device', 'save_network',
                                                                 'save_training_state', 'resume_training',
                                                                 'validation', 'load_network')},
            **{f'SRModel.{n}': SRModel.__dict__[n] for n in ('test', 'dist_validation', 'optimize_parameters',
                                                             'nondist_validation')},
        }

    def origin(obj):
        return obj.__module__, obj.__qualname__

    def members():
        return sorted(BaseModel.__dict__), sorted(SRModel.__dict__)

    before, members_before = snapshot(), members()
    expected = {
        'train.load_resume_state': ('basicsr.train', 'load_resume_state'),
        'options.init_dist': ('basicsr.utils.dist_util', 'init_dist'),
        'dist_util.init_dist': ('basicsr.utils.dist_util', 'init_dist'),
        'train.make_exp_dirs': ('basicsr.utils.misc', 'make_exp_dirs'),
        'test.make_exp_dirs': ('basicsr.utils.misc', 'make_exp_dirs'),
        'train.EnlargedSampler': ('basicsr.data.data_sampler', 'EnlargedSampler'),
        'train.create_train_val_dataloader': ('basicsr.train', 'create_train_val_dataloader'),
    }
    for key, obj in before.items():
        want = expected.get(key) or (('basicsr.models.base_model' if key.startswith('Base') else
                                      'basicsr.models.sr_model'), key)
        assert origin(obj) == want, (key, origin(obj))
    from cadyq_plugin.train import train_pipeline
    train_pipeline(sys.argv[1], ['-opt', sys.argv[2]])
    after = snapshot()
    changed = [key for key in before if after[key] is not before[key]]
    assert not changed, changed
    assert members() == members_before, 'no method added to BaseModel or SRModel'
    assert 'load_network' not in SRModel.__dict__
    print('BasicSR untouched:', len(before), 'attributes')
''')


def test_basicsr_is_not_modified_by_import_or_a_whole_training_run(data, tmp_path):
    script = tmp_path / 'not_patched.py'
    script.write_text(NOT_PATCHED)
    opt = fp_options(tmp_path, data, 2, **{'val.val_freq': 2})
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), opt], cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'BasicSR untouched: 17 attributes' in proc.stdout
    assert os.path.isfile(os.path.join(experiment_dir(tmp_path), 'models', 'net_g_latest.pth'))


def test_compat_applies_only_what_the_probes_find_broken():
    from cadyq_plugin import _compat
    for probe, fix in _compat.FIXES:
        assert probe() is False, f'{probe.__name__}: fixed at import, so the probe finds nothing to fix now'
    assert _compat.apply() == []


# ============================================================================================ stock BasicSR
def stock_options():
    with open(STOCK_OPTIONS) as f:
        return json.load(f)


def with_local_paths(opt, tmp_path):
    """A stock options file with ``num_gpu: 0`` and every data / pretrained-model path replaced by a real one."""
    folder = tmp_path / 'data'
    folder.mkdir(exist_ok=True)
    (folder / 'meta_info.txt').write_text('')
    dummy = tmp_path / 'file.pth'
    dummy.write_bytes(b'')
    opt = json.loads(json.dumps(opt))
    opt['num_gpu'] = 0
    for dataset in (opt.get('datasets') or {}).values():
        for key in list(dataset):
            if key.startswith('dataroot'):
                dataset[key] = str(folder)
            elif key in ('meta_info_file', 'meta_info'):
                dataset[key] = str(dummy)
    for key, value in (opt.get('path') or {}).items():
        if key.startswith('pretrain_network') and value:
            opt['path'][key] = str(dummy)
    return opt


@pytest.mark.parametrize('name', sorted(stock_options()))
def test_basicsr_own_options_files_pass_the_check(name, tmp_path):
    """Every options file BasicSR 1.4.2 ships (its ``options/`` folder, comments dropped) passes the check with
    local paths, unless BasicSR itself cannot run it (named in STOCK_FAILS with the reason)."""
    opt = with_local_paths(stock_options()[name], tmp_path)
    phase = 'test' if name.startswith('options/test/') else 'train'
    if name not in STOCK_FAILS:
        check_options(opt, name, phase)
        return
    with pytest.raises(ConfigError) as info:
        check_options(opt, name, phase)
    assert len(info.value.problems) == 1 and 'CADyQ' not in str(info.value)


def test_stock_messages_carry_no_cadyq_advice(tmp_path):
    opt = with_local_paths(stock_options()['options/train/EDSR/train_EDSR_Mx4.yml'], tmp_path)
    opt['datasets']['train']['dataroot_gt'] = str(tmp_path / 'missing')
    opt['path']['pretrain_network_g'] = str(tmp_path / 'missing.pth')
    opt['train']['pixel_opt'] = None
    with pytest.raises(ConfigError) as info:
        check_options(opt, 'x.yml', 'train')
    assert len(info.value.problems) == 3
    assert 'CADyQ' not in str(info.value) and 'previous stage' not in str(info.value)


def test_model_types_are_found_like_basicsr_finds_them():
    opt = stock_options()['options/train/RealESRGAN/train_realesrnet_x4plus.yml']
    assert opt['model_type'] == 'RealESRNetModel'  # registered as RealESRNetModel_basicsr
    from cadyq_plugin.config_check.model_type import model_class as _model_class
    assert _model_class(opt).__name__ == 'RealESRNetModel'


def test_a_stock_srmodel_with_a_basicsr_arch_trains_and_tests_under_the_plugin(data, tmp_path):
    """BasicSR's own SRModel and EDSR arch through ``basicsr train`` / ``basicsr test``: BasicSR's behaviour."""
    overrides = {'model_type': 'SRModel', 'network_g': {'type': 'EDSR', 'num_in_ch': 3, 'num_out_ch': 3,
                                                        'num_feat': 8, 'num_block': 1, 'upscale': 4},
                 'logger.use_tb_logger': False, 'path.pretrain_network_g': None, 'name': 'stock_edsr'}
    opt = tiny_stage_options(str(tmp_path), data, 'train_edsrbaseline', 'fp', total_iter=2, **overrides)
    proc = run_cli(['train', '-opt', opt], cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    exp = experiment_dir(tmp_path, 'stock_edsr')
    assert 'Model [SRModel] is created' in proc.stderr + proc.stdout
    test_opt = str(tmp_path / 'test.yml')
    derive_options(opt, {'name': 'stock_edsr_test', 'datasets.train': None, 'train': None, 'logger': None,
                         'datasets.test_1': {'name': 'tiny', 'type': 'PairedImageDataset', 'filename_tmpl': '{}',
                                             'io_backend': {'type': 'disk'}, 'dataroot_gt': f'{data}/HR',
                                             'dataroot_lq': f'{data}/LR'}, 'datasets.val': None,
                         'path.pretrain_network_g': os.path.join(exp, 'models', 'net_g_latest.pth')}, test_opt)
    proc = run_cli(['test', '-opt', test_opt], cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r'Validation tiny\n\t # psnr: [\d.]+', proc.stderr + proc.stdout)


# ============================================================================================ schedule
def _lr_per_iteration(train_opt):
    """The learning rate of every group at iterations 1..total_iter, through BasicSR's scheduler and its
    ``update_learning_rate`` rule (the scheduler steps before every iteration but the first)."""
    from basicsr.models import lr_scheduler
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.Adam([{'params': params[:1], 'lr': train_opt['optim_g']['lr']},
                                  {'params': params[1:], 'lr': train_opt['optim_alpha']['lr']}])
    scheduler_opt = dict(train_opt['scheduler'])
    assert scheduler_opt.pop('type') == 'MultiStepLR'
    scheduler = lr_scheduler.MultiStepRestartLR(optimizer, **scheduler_opt)
    for it in range(1, int(train_opt['total_iter']) + 1):
        if it > 1:
            scheduler.step()
        yield it, [group['lr'] for group in optimizer.param_groups]


@pytest.mark.filterwarnings('ignore:Detected call of `lr_scheduler.step()`')  # no optimizer steps here
@pytest.mark.parametrize('backbone, epochs_per_step', [('edsrbaseline', 150), ('carn', 400)])
def test_the_reference_options_reproduce_the_original_step_schedule(backbone, epochs_per_step):
    """The original steps StepLR(step_size) at the start of every 1000-iteration epoch, so iteration i runs at
    ``lr0 * 0.5 ** (ceil(i / 1000) // step_size)``: every iteration of the run is checked against that formula.
    The PAMS and CADyQ stages of every backbone (the wrapped BasicSR networks too) share one of the two schedules
    checked here."""
    stages = [read_yml(os.path.join(OPTIONS, f'train_{b}_{s}.yml'))['train']
              for b in (['carn'] if backbone == 'carn' else ['edsrbaseline', 'idn', 'srresnet', 'msrresnet', 'rrdbnet',
                                                              'rcan', 'swinir']) for s in ('pams', 'cadyq')]
    keys = ('scheduler', 'total_iter')
    assert all({k: t[k] for k in keys} == {k: stages[0][k] for k in keys} for t in stages)
    lr0 = [stages[0]['optim_g']['lr'], stages[0]['optim_alpha']['lr']]
    for it, lrs in _lr_per_iteration(stages[0]):
        factor = 0.5**(math.ceil(it / 1000) // epochs_per_step)
        assert lrs == [lr * factor for lr in lr0], it
    assert it == stages[0]['total_iter']


# ============================================================================================ one run per folder
def test_a_second_run_of_a_running_experiment_stops_at_once_and_sigterm_saves(data, tmp_path):
    """Run A trains; run B with the same name stops at once naming the folder and A's process, and A's folder
    stays where it is. SIGTERM then makes A save the iteration it is at and exit 143; --auto_resume continues
    from there to the same losses and weights as an uninterrupted run of as many iterations."""
    run_dir, ref_dir = tmp_path / 'run', tmp_path / 'reference'
    quick = {'logger.save_checkpoint_freq': 1000, 'val.val_freq': 1000}
    opt = fp_options(run_dir, data, 5000, **quick)
    first = start(['train', '-opt', opt], run_dir)
    exp = experiment_dir(run_dir)
    wait_for(lambda: any(v for v in logged_losses(exp)), first)
    second = run_cli(['train', '-opt', opt], cwd=str(run_dir))
    assert second.returncode == 1 and 'Traceback' not in second.stderr
    assert f"ExperimentError: '{exp}' is in use by process {first.pid}" in second.stderr
    assert not glob.glob(exp + '_archived_*'), 'the running experiment was not archived'

    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 143, err[-3000:]
    stopped_at = int(re.search(r'SIGTERM received: saved the network and training state of iteration (\d+)',
                               err).group(1))
    assert os.path.isfile(os.path.join(exp, 'models', f'net_g_{stopped_at}.pth'))
    assert os.path.isfile(os.path.join(exp, 'training_states', f'{stopped_at}.state'))
    assert not glob.glob(os.path.join(str(run_dir), 'experiments', '.*.running')), 'the lock is released'

    total = stopped_at + 3
    resumed = run_cli(['train', '-opt', opt, '--auto_resume', '--force_yml', f'train:total_iter={total}'],
                      cwd=str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f'iter: {stopped_at}.' in resumed.stderr
    proc = run_cli(['train', '-opt', fp_options(ref_dir, data, total, **quick)], cwd=str(ref_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference, curve = logged_losses(experiment_dir(ref_dir)), logged_losses(exp)
    assert all(set(curve[it]) == set(reference[it]) for it in range(1, total + 1)), 'the same curve'
    assert same_weights(load_params(os.path.join(exp, 'models', 'net_g_latest.pth')),
                        load_params(os.path.join(experiment_dir(ref_dir), 'models', 'net_g_latest.pth')))


def test_sigint_saves_too_and_a_stale_lock_of_a_killed_run_is_taken_over(data, tmp_path):
    opt = fp_options(tmp_path, data, 5000, **{'logger.save_checkpoint_freq': 1000, 'val.val_freq': 1000})
    run = start(['train', '-opt', opt], tmp_path)
    exp = experiment_dir(tmp_path)
    wait_for(lambda: any(v for v in logged_losses(exp)), run)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 130 and 'Traceback' not in err, err[-3000:]
    stopped_at = int(re.search(r'SIGINT received: saved .* of iteration (\d+)', err).group(1))
    assert os.path.isfile(os.path.join(exp, 'training_states', f'{stopped_at}.state'))

    killed = start(['train', '-opt', opt, '--auto_resume'], tmp_path)
    lock = os.path.join(str(tmp_path), 'experiments', '.EDSR_fp_x4.running')
    wait_for(lambda: os.path.isfile(lock), killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert os.path.isfile(lock), 'a killed run leaves its lock behind'
    proc = run_cli(['train', '-opt', opt, '--auto_resume', '--force_yml', 'train:total_iter=' + str(stopped_at + 2)],
                   cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'iter: {stopped_at}.' in proc.stderr and not os.path.exists(lock)


# ============================================================================================ write failures
def _can_mount_tmpfs(path):
    if os.geteuid() != 0 or shutil.which('mount') is None:
        return False
    os.makedirs(path, exist_ok=True)
    ok = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', str(path)], capture_output=True)
    return ok.returncode == 0


@pytest.mark.parametrize('fault', ['disk_full', 'read_only'])
def test_a_failing_save_stops_the_run_naming_the_file_and_keeps_the_earlier_checkpoints(data, tmp_path, fault):
    """After the first checkpoint the disk fills up (the experiments folder on a small tmpfs, as root) or the folder
    turns read-only (a write patched to fail with EROFS: a file system with files open for writing cannot be
    remounted read-only; also the disk-full stand-in where tmpfs cannot be mounted). The next save fails 3 times,
    then the run stops with exit 1 and one CheckpointError line naming the file and the OS error; the earlier
    checkpoints load."""
    experiments = tmp_path / 'experiments'
    opt = fp_options(tmp_path, data, 400, **{'logger.save_checkpoint_freq': 3, 'val.val_freq': 1000})
    mounted = fault == 'disk_full' and _can_mount_tmpfs(experiments)
    try:
        if mounted:
            run = start(['train', '-opt', opt], tmp_path)
            exp = experiment_dir(tmp_path)
            wait_for(lambda: os.path.isfile(os.path.join(exp, 'training_states', '3.state')), run)
            subprocess.run(['dd', 'if=/dev/zero', f'of={experiments}/filler', 'bs=64k'], capture_output=True)
            _, err = run.communicate(timeout=300)
            returncode = run.returncode
        else:
            errno_name = 'ENOSPC' if fault == 'disk_full' else 'EROFS'
            env = {'CADYQ_TEST_FAIL_WRITES_AFTER': '1', 'CADYQ_TEST_ERRNO': errno_name}
            proc = _run_with_failing_writes(opt, tmp_path, env)
            err, returncode = proc.stderr, proc.returncode
            exp = experiment_dir(tmp_path)
        reason = 'No space left on device' if fault == 'disk_full' else 'Read-only file system'
        assert returncode == 1, err[-3000:]
        match = re.search(r"basicsr train: CheckpointError: cannot save (network|training state) '(.*?)': "
                          r'\[Errno \d+\] ' + reason, err)
        assert match, err[-3000:]
        assert err.count('Traceback') == 0 and err.count('(try ') >= 3
        assert int(re.search(r'(\d+)\.(pth|state)$', match.group(2)).group(1)) > 3
        saved = load_params(os.path.join(exp, 'models', 'net_g_3.pth'))
        torch.load(os.path.join(exp, 'training_states', '3.state'), weights_only=True)
        assert saved.keys() and not glob.glob(os.path.join(exp, '*', '.*.tmp')), 'no half-written files'
    finally:
        if mounted:
            subprocess.run(['umount', '-l', str(experiments)], capture_output=True)


FAILING_WRITES = textwrap.dedent('''
    import errno, os, sys
    import cadyq_plugin.checkpoint as checkpoint
    real, calls = checkpoint.atomic_save, []

    def atomic_save(obj, path):
        calls.append(path)
        if len(calls) > 2 * int(os.environ['CADYQ_TEST_FAIL_WRITES_AFTER']):  # a network and a state per save
            code = getattr(errno, os.environ['CADYQ_TEST_ERRNO'])
            raise OSError(code, os.strerror(code), path)
        real(obj, path)

    checkpoint.atomic_save = atomic_save
    from cadyq_plugin.cli import main
    sys.exit(main(sys.argv[1:]))
''')


def _run_with_failing_writes(opt, cwd, env):
    script = os.path.join(str(cwd), 'failing_writes.py')
    with open(script, 'w') as f:
        f.write(FAILING_WRITES)
    return subprocess.run([sys.executable, script, 'train', '-opt', opt], cwd=str(cwd), capture_output=True,
                          text=True, env=dict(os.environ, **env), timeout=600)


READ_ONLY_SETUP = textwrap.dedent('''
    import errno, os, sys
    real = os.makedirs

    def makedirs(path, *args, **kwargs):
        if 'experiments' in str(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real(path, *args, **kwargs)

    os.makedirs = makedirs
    from cadyq_plugin.cli import main
    sys.exit(main(sys.argv[1:]))
''')


def test_a_read_only_experiments_folder_is_one_line_naming_it(data, tmp_path):
    """A read-only tmpfs as experiments/ (as root), else folder creation patched to fail with EROFS."""
    experiments = tmp_path / 'experiments'
    opt = fp_options(tmp_path, data, 2)
    mounted = _can_mount_tmpfs(experiments)
    try:
        if mounted:
            subprocess.run(['mount', '-o', 'remount,ro', str(experiments)], check=True)
            proc = run_cli(['train', '-opt', opt], cwd=str(tmp_path))
        else:
            script = tmp_path / 'read_only.py'
            script.write_text(READ_ONLY_SETUP)
            proc = subprocess.run([sys.executable, str(script), 'train', '-opt', opt], cwd=str(tmp_path),
                                  capture_output=True, text=True, timeout=600)
        assert proc.returncode == 1 and 'Traceback' not in proc.stderr
        assert re.search(r"ExperimentError: cannot set up '.*experiments/EDSR_fp_x4': \[Errno 30\] Read-only",
                         proc.stderr), proc.stderr[-2000:]
    finally:
        if mounted:
            subprocess.run(['umount', '-l', str(experiments)], capture_output=True)


# ============================================================================================ test sets
def test_options_with_missing_test_sets(data, tmp_path):
    """The reference test options name seven sets: one that is not there stops the run (strict default);
    ``--force_yml datasets:<name>=~`` removes a set; ``--skip-missing`` runs those that exist and names the rest."""
    model = tmp_path / 'net.pth'
    torch.save({'params': build_tiny_net().state_dict()}, model)
    test_opt = str(tmp_path / 'test.yml')
    derive_options(os.path.join(OPTIONS, 'test_edsrbaseline_cadyq_image.yml'), {
        'num_gpu': 0, 'network_g.num_feat': 16, 'network_g.num_block': 2, 'path.pretrain_network_g': str(model),
        'datasets.test_1.dataroot_gt': f'{data}/HR', 'datasets.test_1.dataroot_lq': f'{data}/LR',
        'val.save_img': False}, test_opt)
    names = [d['name'] for d in read_yml(test_opt)['datasets'].values()]
    proc = run_cli(['test', '-opt', test_opt], cwd=str(tmp_path))
    assert proc.returncode == 1 and 'datasets.test_2.dataroot_gt' in proc.stderr
    removals = [f'datasets:test_{k}=~' for k in range(2, len(names) + 1)]
    proc = run_cli(['test', '-opt', test_opt, '--force_yml'] + removals, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'Validation {names[0]}' in proc.stderr and f'Validation {names[1]}' not in proc.stderr
    proc = run_cli(['test', '-opt', test_opt, '--skip-missing', '--force_yml', 'name=skip_missing'],
                   cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in names[1:]:
        assert f'--skip-missing: test set {name} skipped' in proc.stderr
    assert len(glob.glob(os.path.join(str(tmp_path), 'results', 'skip_missing', '*_results.csv'))) == 1


def build_tiny_net():
    from basicsr.archs import build_network
    return build_network({'type': 'EDSR_CADyQ', 'quant_mode': 'cadyq', 'num_feat': 16, 'num_block': 2})


# ============================================================================================ exact resume
def test_a_stock_dataset_with_two_workers_resumes_exactly(data, tmp_path):
    """BasicSR's own PairedImageDataset, 2 dataloader workers, random crops and flips: 5 iterations, then a resume
    to 10, log the same losses and end with the same weights as 10 iterations in one go."""
    overrides = {'datasets.train.type': 'PairedImageDataset', 'datasets.train.num_worker_per_gpu': 2,
                 'datasets.train.dataset_enlarge_ratio': 4, 'logger.save_checkpoint_freq': 3, 'val.val_freq': 4}
    once, twice = tmp_path / 'once', tmp_path / 'twice'
    proc = run_cli(['train', '-opt', fp_options(once, data, 10, **overrides)], cwd=str(once))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for total in (5, 10):
        proc = run_cli(['train', '-opt', fp_options(twice, data, total, **overrides), '--auto_resume'], cwd=str(twice))
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Resuming training from epoch: 0, iter: 3' in proc.stderr
    reference, resumed = logged_losses(experiment_dir(once)), logged_losses(experiment_dir(twice))
    assert all(set(resumed[it]) == set(reference[it]) for it in range(1, 11))
    assert same_weights(load_params(os.path.join(experiment_dir(twice), 'models', 'net_g_latest.pth')),
                        load_params(os.path.join(experiment_dir(once), 'models', 'net_g_latest.pth')))


# ============================================================================================ checkpoint files
def test_checkpoints_follow_the_umask_and_keep_pytorch_metadata(tmp_path):
    from cadyq_plugin.models import CADyQSRModel
    net_opt = {'type': 'EDSR_CADyQ', 'quant_mode': 'fp', 'num_feat': 8, 'num_block': 1}
    opt = {'name': 'unit', 'num_gpu': 0, 'is_train': False, 'dist': False, 'rank': 0, 'world_size': 1,
           'network_g': net_opt, 'path': {'models': str(tmp_path)}}
    model = CADyQSRModel(opt)
    old = os.umask(0o027)
    try:
        model.save_network(model.net_g, 'net_g', 1)
    finally:
        os.umask(old)
    path = tmp_path / 'net_g_1.pth'
    assert oct(path.stat().st_mode & 0o777) == oct(0o640)
    params = load_params(path)
    assert getattr(params, '_metadata', None) is not None and params._metadata[''] == \
        model.net_g.state_dict()._metadata['']
