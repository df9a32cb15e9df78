"""``basicsr gpu-check``: the whole command with ``--device cpu --quick`` (every check, tiny sizes: the command is
known to work before a GPU is lent), and its runner: a failing or crashing check is reported while the others
still run, and a check that no longer fits the time budget is skipped."""
import os
import re
import subprocess
import sys

from cadyq_plugin.tools import gpu_check

GPU_CHECK = [sys.executable, '-m', 'cadyq_plugin.cli', 'gpu-check']


def test_every_check_runs_on_the_cpu(tmp_path):
    report = tmp_path / 'report.md'
    proc = subprocess.run(GPU_CHECK + ['--device', 'cpu', '--quick', '--out', str(report), '--workdir',
                                       str(tmp_path / 'work'), '--budget', '1500'], capture_output=True, text=True,
                          timeout=1800, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = report.read_text()
    failed = [name for name, _, _ in gpu_check.CHECKS if f'| {name} | ok |' not in text]
    assert not failed, text[:3000]
    assert 'Every output on cpu, every parameter with a gradient.' in text
    assert '| CPU | - | 0 |' in text, 'the golden bits on the CPU'
    assert 'Resumed against uninterrupted (CPU): 0 of' in text and '(bit-identical)' in text
    assert '| 2 processes, gloo | 0 |' in text
    assert re.search(r'training step \(\w+ \w+ time; batch 2, HR patch 32,', text), 'the benchmark\'s own table'


def test_a_failing_check_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    def broken(ctx):
        raise ValueError('broken on purpose')

    def unmet(ctx):
        raise gpu_check.CheckFailed('2 cases did not hold')

    monkeypatch.setattr(gpu_check, 'CHECKS', [('broken', broken, 0.3), ('unmet', unmet, 0.3),
                                              ('fine', lambda ctx: f'fine on {ctx.device}', 0.3)])
    report = gpu_check.run_checks(['broken', 'unmet', 'fine'], 'cpu', True, str(tmp_path), 100, isolate=False,
                                  log=lambda line: None)
    assert '| broken | FAILED |' in report and 'ValueError: broken on purpose' in report
    assert '| unmet | FAILED |' in report and '2 cases did not hold' in report
    assert '| fine | ok |' in report and 'fine on cpu' in report


def test_a_check_whose_process_fails_is_reported(tmp_path):
    """The CUDA version check on a machine without a GPU: its process reports the error, the runner the check."""
    status, markdown = gpu_check.run_isolated('versions', gpu_check.Context('cuda', True, str(tmp_path), 120))
    assert status == 'FAILED' and 'Traceback' in markdown


def test_checks_that_no_longer_fit_the_budget_are_skipped(tmp_path, monkeypatch):
    clock = [0.0]

    def slow(ctx):
        clock[0] += 97  # seconds of a 100 s budget
        return 'done'

    monkeypatch.setattr(gpu_check, 'CHECKS', [('slow', slow, 1.0), ('next', lambda ctx: 'ran', 1.0)])
    report = gpu_check.run_checks(['slow', 'next'], 'cpu', True, str(tmp_path), 100, isolate=False,
                                  log=lambda line: None, clock=lambda: clock[0])
    assert '| slow | ok | 97 |' in report
    assert '| next | skipped |' in report and 'skipped: 3 s of the 100 s budget left' in report


def test_only_some_checks(tmp_path):
    """``--only`` (the documented way to rerun a part) runs those checks, in the order given."""
    report = tmp_path / 'part.md'
    proc = subprocess.run(GPU_CHECK + ['--device', 'cpu', '--quick', '--only', 'golden', 'versions', '--out',
                                       str(report)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = report.read_text()
    assert text.index('| golden | ok |') < text.index('| versions | ok |') and '| torchrun |' not in text
