"""Dataset preparation notices a changed source (manifests beside each output) and ends a Ctrl-C in one line,
keeping the half-written output."""
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest
from skimage import data as skdata

import cadyq_plugin  # noqa: F401  (compat shim before basicsr)
from cadyq_plugin.data import folder_steps
from cadyq_plugin.data.benchmark_sets import prepare_benchmark
from cadyq_plugin.data.div2k import prepare_div2k
from cadyq_plugin.data.folder_steps import make_lr
from cadyq_plugin.data.outputs import PreparationInterrupted, StaleOutputError
from cadyq_plugin.cli import main as cli_main
from cadyq_plugin.tools.prepare_args import run



@pytest.fixture(scope='module')
def photos():
    rgb = {'coffee': skdata.coffee()[100:201, 200:350], 'chelsea': skdata.chelsea()[50:147, 100:231],
           'astronaut': skdata.astronaut()[100:196, 150:270]}
    return {k: np.ascontiguousarray(v[:, :, ::-1]) for k, v in rgb.items()}


def _folder(path, images):
    path.mkdir(parents=True, exist_ok=True)
    for name, img in images.items():
        cv2.imwrite(str(path / name), img)
    return path


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob('*')) if p.is_file()}


def _lmdb_keys(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        keys = sorted(k.decode() for k, _ in txn.cursor())
    env.close()
    return keys


def _div2k(tmp_path, photos, **kwargs):
    return prepare_div2k(tmp_path / 'DIV2K_train_HR', tmp_path / 'datasets', scales=(4, ), crop_size=48, step=24,
                         **kwargs)


def test_the_manifest_records_source_names_sizes_and_options(tmp_path, photos):
    hr = _folder(tmp_path / 'hr', {'a.png': photos['coffee'], 'b.png': photos['chelsea']})
    make_lr(hr, tmp_path / 'lr', 4)
    manifest = json.loads((tmp_path / 'lr.manifest.json').read_text())
    assert manifest['sources'] == {'input': {'a.png': os.path.getsize(hr / 'a.png'),
                                             'b.png': os.path.getsize(hr / 'b.png')}}
    assert manifest['options'] == {'kind': 'lr', 'scale': 4, 'name_tmpl': '{}', 'compress_level': 3}
    assert sorted(p.name for p in (tmp_path / 'lr').iterdir()) == ['a.png', 'b.png']  # the manifest is beside


def test_an_added_source_image_is_refused_then_redone(tmp_path, photos):
    src = _folder(tmp_path / 'DIV2K_train_HR', {'0001.png': photos['coffee'], '0002.png': photos['chelsea']})
    out = _div2k(tmp_path, photos)
    base = tmp_path / 'datasets' / 'DIV2K'
    before = _snapshot(base)
    old_keys = _lmdb_keys(out['hr_sub_lmdb'])
    _folder(src, {'0003.png': photos['astronaut']})  # the "41st image"
    with pytest.raises(StaleOutputError) as err:
        _div2k(tmp_path, photos)
    message = str(err.value)
    assert message.startswith(f"{base / 'DIV2K_train_LR_bicubic' / 'X4'} is out of date: 1 source file added: "
                              '0003.png. It is left untouched')
    assert '--redo' in message and '--overwrite' in message
    assert _snapshot(base) == before  # nothing touched
    out = _div2k(tmp_path, photos, partial='redo')
    new_keys = _lmdb_keys(out['hr_sub_lmdb'])
    assert set(old_keys) < set(new_keys) and any(k.startswith('0003_') for k in new_keys)
    assert _lmdb_keys(out['lr_sub_lmdb'][4]) == new_keys
    # every stale output was moved aside whole, with its manifest
    backups = sorted(p.name.split('.bak-')[0] for p in base.rglob('*.bak-*') if p.is_dir())
    assert backups == ['DIV2K_train_HR_sub', 'DIV2K_train_HR_sub.lmdb', 'DIV2K_train_LR_bicubic_X4_sub',
                       'DIV2K_train_LR_bicubic_X4_sub.lmdb', 'X4']
    old_lmdb = next(p for p in base.glob('DIV2K_train_HR_sub.lmdb.bak-*') if p.is_dir())
    assert _lmdb_keys(old_lmdb) == old_keys and Path(f'{old_lmdb}.manifest.json').is_file()
    after = _snapshot(base)
    _div2k(tmp_path, photos)  # up to date now: reused as is
    assert _snapshot(base) == after


def test_a_resized_source_or_another_scale_is_named(tmp_path, photos):
    src = _folder(tmp_path / 'src', {'a.png': photos['coffee'], 'b.png': photos['chelsea']})
    prepare_benchmark({'Set5': src}, tmp_path / 'datasets', 4)
    hr = tmp_path / 'datasets' / 'benchmark' / 'Set5' / 'HR'
    with pytest.raises(StaleOutputError, match=rf'^{hr} is out of date: scale 4 -> 2\.'):
        prepare_benchmark({'Set5': src}, tmp_path / 'datasets', 2)
    old_size = os.path.getsize(src / 'b.png')
    _folder(src, {'b.png': photos['chelsea'][:60]})
    with pytest.raises(StaleOutputError) as err:
        prepare_benchmark({'Set5': src}, tmp_path / 'datasets', 4)
    assert f'{hr} is out of date: 1 source file of another size: b.png ({old_size} -> ' \
           f'{os.path.getsize(src / "b.png")} bytes)' in str(err.value)
    (src / 'a.png').unlink()
    with pytest.raises(StaleOutputError, match='1 source file gone: a.png; 1 source file of another size'):
        prepare_benchmark({'Set5': src}, tmp_path / 'datasets', 4)


def test_an_output_without_a_manifest_is_reused_with_a_warning(tmp_path, photos, caplog):
    """Outputs of versions before manifests: nothing says what they were made from, so they are kept (as those
    versions did) with a warning; --redo rebuilds them."""
    src = _folder(tmp_path / 'src', {'a.png': photos['coffee']})
    out = prepare_benchmark({'Set5': src}, tmp_path / 'datasets', 4)['Set5']
    for path in (tmp_path / 'datasets').rglob('*.manifest.json'):
        path.unlink()
    before = _snapshot(tmp_path / 'datasets')
    with caplog.at_level(logging.WARNING, logger='cadyq_plugin.data'):
        prepare_benchmark({'Set5': src}, tmp_path / 'datasets', 4)
    assert _snapshot(tmp_path / 'datasets') == before
    warned = [r.getMessage() for r in caplog.records if 'has no manifest' in r.getMessage()]
    assert len(warned) == 2 and str(out['hr']) in warned[0] and '--redo' in warned[0]
    prepare_benchmark({'Set5': src}, tmp_path / 'datasets', 4, partial='redo')
    assert Path(f"{out['hr']}.manifest.json").is_file() and Path(f"{out['lr']}.manifest.json").is_file()
    assert len([p for p in out['hr'].parent.glob('HR.bak-*') if p.is_dir()]) == 1


def _interrupt_after(monkeypatch, n):
    real, calls = folder_steps.write_png, []

    def flaky(*args, **kwargs):
        if len(calls) >= n:
            raise KeyboardInterrupt
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(folder_steps, 'write_png', flaky)


def test_a_half_written_output_of_another_source_is_not_resumed(tmp_path, photos, monkeypatch):
    hr = _folder(tmp_path / 'hr', {f'{i}.png': photos['coffee'][i:i + 60, i:i + 80] for i in range(3)})
    with monkeypatch.context() as m:
        _interrupt_after(m, 1)
        with pytest.raises(PreparationInterrupted) as err:
            make_lr(hr, tmp_path / 'lr', 4)
    assert err.value.partial == tmp_path / 'lr.partial' and isinstance(err.value, KeyboardInterrupt)
    _folder(hr, {'3.png': photos['chelsea'][:60, :80]})
    with pytest.raises(StaleOutputError, match=rf"^{tmp_path / 'lr.partial'} cannot be resumed, it was started from "
                       r'other sources or options: 1 source file added: 3.png\. Pass .*--redo'):
        make_lr(hr, tmp_path / 'lr', 4, partial='resume')
    make_lr(hr, tmp_path / 'lr', 4, partial='redo')
    assert sorted(p.name for p in (tmp_path / 'lr').iterdir()) == ['0.png', '1.png', '2.png', '3.png']


CHILD = '''
import sys, time
from cadyq_plugin.data import folder_steps
real = folder_steps.write_png
def write_then_wait(*args, **kwargs):  # the first image is written, then the step waits for the Ctrl-C
    real(*args, **kwargs)
    time.sleep(300)
folder_steps.write_png = write_then_wait
from cadyq_plugin.cli import main
sys.exit(main(['prepare-benchmark'] + sys.argv[1:]))
'''


def test_ctrl_c_keeps_the_partial_and_prints_one_line(tmp_path, photos):
    src = _folder(tmp_path / 'src', {'a.png': photos['coffee'], 'b.png': photos['chelsea']})
    argv = ['--set', f'Set5={src}', '--root', str(tmp_path / 'datasets')]
    child = subprocess.Popen([sys.executable, '-c', CHILD] + argv,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = tmp_path / 'datasets' / 'benchmark' / 'Set5' / 'HR.partial'
    deadline = time.monotonic() + 120
    while not list(partial.glob('*.png')) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130
    assert 'Traceback' not in err and 'KeyboardInterrupt' not in err
    expected = f'interrupted: {partial} kept; run again with --resume or --redo'
    assert err.strip().splitlines()[-1] == expected and err.count('interrupted') == 1
    assert [p.name for p in partial.glob('*.png')] == ['a.png']
    assert cli_main(['prepare-benchmark'] + argv + ['--resume']) == 0
    assert sorted(p.name for p in (partial.parent / 'HR').iterdir()) == ['a.png', 'b.png'] and not partial.exists()


def test_ctrl_c_before_any_step_says_so(capsys):
    import argparse

    def interrupted(args):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        run(argparse.ArgumentParser(prog='prepare'), interrupted, [])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.strip() == 'interrupted before any output was started: nothing to resume'
