"""The ``basicsr`` commands: one table, one shape of module, and a smoke test of each command that has none
elsewhere, run through the real entry point on tiny inputs (train/test: test_cli_pipeline.py; bitops:
test_bitops.py; convert: test_golden_convert.py; infer/export: test_deploy.py; gpu-check: test_gpu_check.py)."""
import ast
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest
import torch

from cadyq_plugin.cli import COMMANDS, PIPELINES, main as cli_main

REPO = Path(__file__).resolve().parents[1]


def _images(folder, sizes, seed=0):
    """Random BGR images ``{name: (height, width)}`` written as PNGs into ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for name, (height, width) in sizes.items():
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return folder


def _shape(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape


# ---------------------------------------------------------------------------------------------- the command table
@pytest.mark.parametrize('name', [name for name in COMMANDS if name not in PIPELINES])
def test_every_command_is_a_tools_module_with_build_parser_and_main(name):
    module = importlib.import_module(COMMANDS[name].module)
    assert module.__name__.startswith('cadyq_plugin.tools.')
    assert module.build_parser().prog == f'basicsr {name}'
    assert callable(module.main)


def test_help_lists_every_command_with_its_summary(capsys):
    assert cli_main(['--help']) == 0
    listed = {line.split()[0]: line.split(None, 1)[1] for line in capsys.readouterr().out.splitlines()
              if line.startswith('  ')}
    assert listed == {name: command.summary for name, command in COMMANDS.items()}
    assert cli_main(['no-such-command']) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err


def test_scripts_hold_launchers_only():
    """Python files in scripts/ are launchers of a command (or install.sh's helper, needed before the install)."""
    for path in sorted((REPO / 'scripts').glob('*.py')):
        if path.name == 'install_status.py':
            continue
        command = path.stem.replace('_', '-')
        assert command in COMMANDS, f'{path}: not a command'
        assert f"main(['{command}'] + sys.argv[1:])" in path.read_text(), f'{path}: not a launcher of {command}'


def tools_imports():
    """``{module: tools modules it imports}`` for the modules of cadyq_plugin/tools, function-level imports included."""
    graph = {}
    for path in (REPO / 'cadyq_plugin' / 'tools').glob('*.py'):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == 'cadyq_plugin.tools':
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('cadyq_plugin.tools.'):
                imported.add(node.module.split('.')[2])
            elif isinstance(node, ast.Import):
                imported.update(alias.name.split('.')[2] for alias in node.names
                                if alias.name.startswith('cadyq_plugin.tools.'))
        graph[path.stem] = imported - {path.stem}
    return graph


def test_the_tools_import_no_cycle():
    graph = tools_imports()
    assert 'backend_benchmark' in graph['benchmark'], 'the walk sees imports inside functions'

    def visit(module, path):
        assert module not in path, f'import cycle: {" -> ".join(path[path.index(module):] + [module])}'
        for imported in graph.get(module, ()):
            visit(imported, path + [module])

    for module in graph:
        visit(module, [])


def test_a_launcher_runs_its_command(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / 'scripts' / 'gpu_check.py'), '--help'], capture_output=True,
                         text=True, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0 and out.stdout.startswith('usage: basicsr gpu-check')


# ---------------------------------------------------------------------------------------------- data preparation
def test_prepare_div2k_writes_sub_image_lmdbs_of_every_scale(tmp_path):
    hr = _images(tmp_path / 'DIV2K_train_HR', {'0001.png': (100, 130), '0002.png': (72, 96)})
    root = tmp_path / 'datasets'
    assert cli_main(['prepare-div2k', '--hr', str(hr), '--root', str(root), '--scales', '2', '4', '--crop-size', '48',
                     '--step', '24']) == 0
    base = root / 'DIV2K'
    # HR mod-cropped by 4: 100x128 and 72x96. Crops of 48 every 24, plus a border crop where some is left: rows 0, 24,
    # 48, 52 and columns 0, 24, 48, 72, 80 of the first; rows 0, 24 and columns 0, 24, 48 of the second
    expected = 4 * 5 + 2 * 3
    for folder, size in (('DIV2K_train_HR_sub.lmdb', 48), ('DIV2K_train_LR_bicubic_X2_sub.lmdb', 24),
                         ('DIV2K_train_LR_bicubic_X4_sub.lmdb', 12)):
        meta = (base / folder / 'meta_info.txt').read_text().split('\n')
        meta = [line for line in meta if line]
        assert len(meta) == expected and all(f'({size},{size},3)' in line for line in meta)
        with lmdb.open(str(base / folder), readonly=True, lock=False) as env:
            assert env.stat()['entries'] == expected
    assert _shape(base / 'DIV2K_train_LR_bicubic' / 'X4' / '0001x4.png') == (25, 32, 3)


def test_prepare_benchmark_mod_crops_and_refuses_a_bad_mapping(tmp_path, capsys):
    src = _images(tmp_path / 'Set5', {'baby.png': (101, 143), 'bird.bmp': (64, 50)})
    root = tmp_path / 'datasets'
    assert cli_main(['prepare-benchmark', '--set', f'Set5={src}', '--root', str(root), '--scale', '3']) == 0
    out = root / 'benchmark' / 'Set5'
    assert {p.name: _shape(p) for p in (out / 'HR').iterdir()} == {'baby.png': (99, 141, 3), 'bird.png': (63, 48, 3)}
    assert {p.name: _shape(p) for p in (out / 'LR_bicubic' / 'X3').iterdir()} == {
        'baby.png': (33, 47, 3), 'bird.png': (21, 16, 3)}
    with pytest.raises(SystemExit) as stopped:
        cli_main(['prepare-benchmark', '--set', 'Set5', '--root', str(root)])
    assert stopped.value.code == 2 and 'KEY=PATH' in capsys.readouterr().err


def test_prepare_div8k_as_a_process(tmp_path):
    div8k = _images(tmp_path / 'DIV8K', {'1201.png': (96, 136), '1301.png': (48, 68), '1401.png': (24, 34)})
    root = tmp_path / 'datasets'
    out = subprocess.run([sys.executable, '-m', 'cadyq_plugin.cli', 'prepare-div8k', '--hr', str(div8k), '--root',
                          str(root), '--scale', '2'], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # downsampled from 8K by 4 / 2 / 1, then mod-cropped by the scale 2
    for name, image, hr in (('Test2K', '1201.png', (24, 34)), ('Test4K', '1301.png', (24, 34)),
                            ('Test8K', '1401.png', (24, 34))):
        assert _shape(root / name / 'HR' / image) == hr + (3, )
        assert _shape(root / name / 'LR_bicubic' / 'X2' / image) == (hr[0] // 2, hr[1] // 2, 3)


# ---------------------------------------------------------------------------------------------- the quickstart
def test_quickstart_trains_tests_and_tabulates_every_stage(tmp_path):
    """One iteration per stage: the real orchestration (data, three ``basicsr train``, three ``basicsr test``)."""
    out = subprocess.run([sys.executable, '-m', 'cadyq_plugin.cli', 'quickstart', '--iters', '1', '1', '1', '--batch',
                          '1', '--gt-size', '16', '--workdir', str(tmp_path / 'work')], capture_output=True, text=True,
                         timeout=1200, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = {cells[0]: cells[1:] for cells in ([cell.strip() for cell in line.strip('|').split('|')]
                                              for line in out.stdout.splitlines() if line.startswith('| '))}
    psnr, ssim, fab, bitops = zip(*(rows[stage] for stage in ('fp', 'pams', 'cadyq')))
    assert all(float(value) > 0 for value in psnr + ssim)
    assert fab[0] == '32 (FP)' and fab[1] == '8.00' and 4 <= float(fab[2]) <= 8
    assert float(bitops[0]) > float(bitops[1]) >= float(bitops[2])
    phases = ('start (python, imports)', 'data', 'fp train', 'fp test', 'pams train', 'pams test', 'cadyq train',
              'cadyq test', 'total')
    assert all(phase in rows for phase in phases)
    assert (tmp_path / 'work' / 'experiments').is_dir()


# ---------------------------------------------------------------------------------------------- the benchmark
def tiny_backend_settings():
    """Inputs of the backends stage small enough for a test (its own are a 720p output and a 10-patch image)."""
    generator = torch.Generator().manual_seed(0)
    return {'image-wise LR 16x20': (torch.rand(1, 3, 16, 20, generator=generator), None),
            'patch-wise LR 24x24 (12/10, batch 4)': (torch.rand(1, 3, 24, 24, generator=generator),
                                                     {'patch': 12, 'step': 10, 'batch': 4})}


def test_benchmark_of_an_options_files_network(tmp_path, capsys, monkeypatch):
    """The docs' command for the wrapper table (docs/own_networks.md: ``basicsr benchmark --opt
    options/train_rcan_cadyq.yml``, no ``--archs``) on that file's network made tiny, one repetition: every stage
    prints its line, the backends stage measures the file's network."""
    from cadyq_plugin.tools import backend_benchmark
    from cadyq_plugin.tools.derive_options import derive_options
    opt = tmp_path / 'rcan.yml'
    derive_options(str(REPO / 'options' / 'train_rcan_cadyq.yml'), {
        'network_g.backbone.num_feat': 16, 'network_g.backbone.num_group': 1, 'network_g.backbone.num_block': 1,
        'network_g.backbone.squeeze_factor': 4}, str(opt))
    monkeypatch.setattr(backend_benchmark, 'SETTINGS', tiny_backend_settings())
    assert cli_main(['benchmark', '--device', 'cpu', '--opt', str(opt), '--batch', '1', '--patch', '16', '--repeats',
                     '1', '--warmup', '0', '--infer-lr', '8', '--patchwise-image', '96x96', '--patchwise-batch', '2',
                     '--memory-image', '96x96', '--backend-repeats', '1', '--skip', 'compiled', 'backend-memory']) == 0
    out = capsys.readouterr().out
    assert '\n== RCAN ==\n' in out and 'operations of one eager training step: FP ' in out
    assert re.search(r'^training step \(median wall time; batch 1, HR patch 16, .*\): eager FP [\d.]+ ms', out, re.M)
    ratio = re.search(r'^inference \(LR 8x8\): FP ([\d.]+) ms, CADyQ ([\d.]+) ms \(([\d.]+)x\)$', out, re.M)
    fp_ms, cadyq_ms, printed = float(ratio[1]), float(ratio[2]), float(ratio[3])
    # the times are printed to 0.1 ms: their quotient is the ratio up to that rounding
    assert abs(printed - cadyq_ms / fp_ms) <= 0.01 + printed * (0.05 / fp_ms + 0.05 / cadyq_ms)
    assert 'patch-wise LR 96x96 (1 patches of 96, step 90): batch 1 ' in out
    assert 'peak memory, RCAN patch-wise LR 96x96 (batch 2): ' in out
    rows = re.findall(r'^\| CADyQWrapper \| (.+?) \| [\d.]+ \((?:NCHW|channels-last)\) \|', out, re.M)
    assert rows == list(tiny_backend_settings()) * len(backend_benchmark.CLOCKS)  # the file's network, each setting
    assert out.rstrip().splitlines()[-1].startswith(('targets: ', 'MISSED: '))


def test_benchmark_without_archs_measures_the_default_backbones_backends(capsys, monkeypatch):
    """``python scripts/benchmark.py`` without ``--archs``: the backends stage runs the default backbones (one
    here, at tiny inputs) through the launcher's command."""
    from cadyq_plugin.tools import backend_benchmark, benchmark
    monkeypatch.setattr(benchmark, 'DEFAULT_BACKBONES', ('SRResNet_CADyQ', ))
    monkeypatch.setattr(backend_benchmark, 'SETTINGS', tiny_backend_settings())
    assert cli_main(['benchmark', '--device', 'cpu', '--backend-repeats', '1', '--skip', 'ops', 'train', 'infer',
                     'patchwise', 'memory', 'backend-memory']) == 0
    out = capsys.readouterr().out
    assert '\n== SRResNet_CADyQ ==\n' in out
    assert len(re.findall(r'^\| SRResNet_CADyQ \| ', out, re.M)) == 2 * len(backend_benchmark.CLOCKS)


# ---------------------------------------------------------------------------------------------- int8 accuracy
def test_int8_accuracy_of_the_trained_network(tmp_path, capsys):
    """The tests' trained EDSR (tests/data/trained), its FP layers calibrated on two small LR images, on 32-pixel
    crops of the held-out photos: the reference and the post-training network, each in both backends."""
    lr = _images(tmp_path / 'lr', {'a.png': (16, 16), 'b.png': (12, 20)})
    model = REPO / 'tests' / 'data' / 'trained' / 'edsr_cadyq_quickstart_int8.pth'
    assert cli_main(['int8-accuracy', '--model', str(model), '--calibrate', str(lr), '--size', '32']) == 0
    out = capsys.readouterr().out
    assert 'post-training calibration on 2 images' in out
    rows = re.findall(r'^\| (.+?) \| (fake|int8) \| ([\d.]+) \| ([+-][\d.]+) \| ([\d.]+) \| ([\d.]+) \|$', out, re.M)
    assert [row[:2] for row in rows] == [('reference (FP layers in float)', 'fake'),
                                         ('reference (FP layers in float)', 'int8'),
                                         ('post-training 8-bit FP layers', 'fake'),
                                         ('post-training 8-bit FP layers', 'int8')]
    assert rows[0][3] == '+0.0000' and all(float(row[2]) > 10 and 4 <= float(row[5]) <= 8 for row in rows)
    assert all(abs(float(row[3]) - (float(row[2]) - float(rows[0][2]))) < 2e-4 for row in rows)


# ---------------------------------------------------------------------------------------------- budget evidence
def test_budget_evidence_tabulates_and_plots_earlier_runs(tmp_path, capsys):
    """``--include`` of an earlier run's results and no new backbone: the table, its exit status (within the
    tolerances or not), the JSON and markdown beside it, and the plot (matplotlib, the plots extra)."""
    pytest.importorskip('matplotlib')
    curve = {str(i): {'avg_bit': 6.0 + (-1) ** i * 0.2, 'running_fab': 6.0} for i in range(1, 21)}
    runs = [{'arch': 'edsr', 'target': 6.0, 'train_fab': 6.1, 'running_fab': 6.0, 'net_fab': 6.3,
             'val_fab': 6.4, 'psnr': 27.5, 'curve': curve, 'validations': [[20, 6.4]]}]
    (tmp_path / 'earlier.json').write_text(json.dumps({'results': runs}))
    args = ['budget-evidence', '--archs', '--include', str(tmp_path / 'earlier.json'), '--workdir',
            str(tmp_path / 'work'), '--plot', str(tmp_path / 'fab.png')]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert '| edsr | 6.00 | 6.10 | 6.30 | yes | 6.40 | 27.50 |' in out
    assert (tmp_path / 'fab.png').stat().st_size > 0
    assert '| edsr | 6.00 |' in (tmp_path / 'work' / 'budget_evidence.md').read_text()
    runs[0]['net_fab'] = 7.0  # 1 bit off the target: outside the network FAB's tolerance
    (tmp_path / 'earlier.json').write_text(json.dumps({'results': runs}))
    assert cli_main(args) == 1 and '| 7.00 | no | 6.40 | 27.50 |' in capsys.readouterr().out
