"""The quickstart's moving parts: progress lines followed from a run's log, the options it changes, its thread
setting, its phase table, its reuse of prepared data, and what ``install.sh`` may skip."""
import importlib.util
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cadyq_plugin  # noqa: F401  (compat shim before basicsr)
from cadyq_plugin.tools import quickstart
from cadyq_plugin.tools.derive_options import load_options
from cadyq_plugin.tools.logged_run import run_logged

REPO = Path(__file__).resolve().parents[1]
# what BasicSR's MessageLogger writes, with the rest of a real log around it
CHILD = textwrap.dedent('''
    import sys, time
    print('2026-12-01 11:44:43,741 INFO: Start training from epoch: 0, iter: 0', flush=True)
    for it in (10, 20, 30):
        time.sleep(0.2)
        sys.stdout.write(f'2026-12-01 11:44:51,614 INFO: [EDSR_..][epoch:  1, iter:{it:8d}, lr:(1.000e-04,)] ')
        sys.stdout.flush()
        time.sleep(0.2)  # the rest of the line arrives later: only complete lines count
        print(f'[eta: 0:00:{30 - it:02d}, time (data): 0.262 (0.007)] l_pix: 8.7814e+00', flush=True)
    print('End of training.', file=sys.stderr, flush=True)
    sys.exit(3)
''')


def test_progress_lines_are_followed_from_the_log(tmp_path):
    out = io.StringIO()
    log = tmp_path / 'train.log'
    lines = []

    def on_line(line):
        lines.append(line)
        quickstart.progress_printer('fp', 30, out)(line)

    status = run_logged([sys.executable, '-c', CHILD], str(log), on_line, poll_seconds=0.05)
    assert status == 3
    assert out.getvalue().splitlines() == [f'[quickstart] fp: {it}/30 iterations, ETA 0:00:{30 - it:02d}'
                                           for it in (10, 20, 30)]
    assert lines == log.read_text().splitlines() and lines[-1] == 'End of training.'  # the full log is kept


def test_a_failed_basicsr_command_names_its_log(tmp_path, monkeypatch):
    log = tmp_path / 'test_fp.log'
    calls = []

    def failing(argv, log_path, on_line=None, **kwargs):
        calls.append(argv)
        Path(log_path).write_text('... the end of the log\n')
        return 2

    monkeypatch.setattr(quickstart, 'run_logged', failing)
    with pytest.raises(quickstart.QuickstartError) as err:
        quickstart.run_basicsr(['test', '-opt', 'x.yml'], str(tmp_path), str(log), {})
    assert calls == [[sys.executable, '-m', 'cadyq_plugin.cli', 'test', '-opt', 'x.yml']]
    assert str(err.value) == f'`basicsr test -opt x.yml` failed (exit 2); full log {log}:\n... the end of the log\n'


@pytest.mark.parametrize('stage', quickstart.STAGES)
@pytest.mark.parametrize('arch', sorted(quickstart.BACKBONE_OPTIONS))
def test_only_existing_keys_of_the_reference_options_change(arch, stage):
    """Data paths, sizes, iteration counts and logging frequencies: each one a key the reference file has."""
    prefix = quickstart.BACKBONE_OPTIONS[arch][0]
    reference = load_options(os.path.join(quickstart.OPTIONS, f'{prefix}_{stage}.yml'))
    data = {k: f'/data/{k}' for k in ('train_gt_lmdb', 'train_lq_lmdb', 'val_gt', 'val_lq')}
    overrides = quickstart.stage_overrides(data, stage, 150, 4, 48)
    for key in overrides:
        node = reference
        for part in key.split('.'):
            assert isinstance(node, dict) and part in node, f'{key} is not in {prefix}_{stage}.yml'
            node = node[part]
    assert overrides['train.total_iter'] == 150 and overrides['datasets.train.gt_size'] == 48
    assert overrides['logger.print_freq'] == 15  # one progress line per tenth of the run


def test_one_thread_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    monkeypatch.delenv('MKL_NUM_THREADS', raising=False)
    env = quickstart.thread_env()
    assert env['OMP_NUM_THREADS'] == '1' and env['MKL_NUM_THREADS'] == '1'
    monkeypatch.setenv('OMP_NUM_THREADS', '2')
    env = quickstart.thread_env()
    assert env['OMP_NUM_THREADS'] == '2' and env['MKL_NUM_THREADS'] == '2'


def test_the_time_table_adds_up():
    table = quickstart.format_times([('install', 60.4, ''), ('data', 2.2, 'built'), ('fp train', 30.0, '200')])
    assert table.splitlines()[-1] == '| total | 93 | |'
    assert '| data | 2 | built |' in table


def test_a_second_build_says_the_data_was_reused(tmp_path):
    data, reused = quickstart.build_data(str(tmp_path))
    assert not reused and data['train_gt_lmdb'].is_dir()
    stamp = (data['train_gt_lmdb'] / 'data.mdb').stat().st_mtime_ns
    assert quickstart.build_data(str(tmp_path)) == (data, True)
    assert (data['train_gt_lmdb'] / 'data.mdb').stat().st_mtime_ns == stamp
    assert 'up to date: reused' in (tmp_path / 'data.log').read_text()


def _install_status():
    spec = importlib.util.spec_from_file_location('install_status', REPO / 'scripts' / 'install_status.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_install_status_versions():
    import importlib.metadata
    status = _install_status()
    assert status.version('pytest') == importlib.metadata.version('pytest')
    assert status.version('no-such-distribution-here') is None
    assert status.main(['version', 'no-such-distribution-here']) == 1


PLUGIN_CHECK = textwrap.dedent('''
    import importlib.util, sys
    sys.path.insert(0, sys.argv[1])  # the fake site: cadyq_plugin's dist-info and its source
    spec = importlib.util.spec_from_file_location('install_status', sys.argv[3])
    status = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(status)
    print(status.plugin_is_current(sys.argv[2]))
''')


@pytest.mark.parametrize('case', ['current', 'missing requirement', 'setup.py changed', 'another checkout'])
def test_install_status_plugin(tmp_path, case):
    """A fake installed plugin (dist-info + package) on a fresh interpreter's path, one condition broken at a time."""
    site, repo = tmp_path / 'site', tmp_path / 'repo'
    (repo / 'cadyq_plugin').mkdir(parents=True)
    (repo / 'cadyq_plugin' / '__init__.py').write_text('')
    (repo / 'setup.py').write_text('')
    os.utime(repo / 'setup.py', (1e9, 1e9))
    dist_info = site / 'cadyq_plugin-0.1.0.dist-info'
    dist_info.mkdir(parents=True)
    requirement = 'no-such-distribution-here' if case == 'missing requirement' else 'pytest'
    (dist_info / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: cadyq-plugin\nVersion: 0.1.0\n'
                                        f'Requires-Dist: {requirement}\n')
    (dist_info / 'RECORD').write_text('cadyq_plugin-0.1.0.dist-info/METADATA,,\n')
    (site / 'cadyq_plugin').symlink_to(repo / 'cadyq_plugin')  # what the editable finder resolves to
    if case == 'setup.py changed':
        os.utime(repo / 'setup.py', None)
        os.utime(dist_info / 'METADATA', (1e9 - 10, 1e9 - 10))
    checkout = tmp_path / 'other' if case == 'another checkout' else repo
    result = subprocess.run([sys.executable, '-I', '-c', PLUGIN_CHECK, str(site), str(checkout),
                             str(REPO / 'scripts' / 'install_status.py')], capture_output=True, text=True)
    assert result.stdout.strip() == str(case == 'current'), result.stderr
