"""``basicsr bitops`` refuses what it cannot answer in one line: a FAB outside the candidate bits, bad ``bits``
(worded as the config check words them), a bad options file or output size."""
import os
import re

import pytest
import yaml

import cadyq_plugin  # noqa: F401  (compat shim before basicsr)
from cadyq_plugin.cli import main as cli_main
from cadyq_plugin.config_check import ConfigError, check_options
from cadyq_plugin.options import read_yml
from tiny_workspace import OPTIONS

REFERENCE = os.path.join(OPTIONS, 'train_edsrbaseline_cadyq.yml')


def _bitops(capsys, *args):
    status = cli_main(['bitops', *args])
    out, err = capsys.readouterr()
    return status, out, err


def _options_with_bits(tmp_path, bits):
    opt = read_yml(REFERENCE)
    opt['network_g'] = dict(opt['network_g'], bits=bits, num_block=2)
    path = tmp_path / 'bits.yml'
    path.write_text(yaml.safe_dump(_plain(opt)))
    return str(path)


def _plain(node):
    if isinstance(node, dict):
        return {k: _plain(v) for k, v in node.items()}
    return [_plain(v) for v in node] if isinstance(node, (list, tuple)) else node


@pytest.mark.parametrize('fab', ['9', '2', '3.99', '8.01'])
def test_fab_outside_the_candidates_is_refused(capsys, fab):
    status, out, err = _bitops(capsys, '-opt', REFERENCE, '--fab', '6', '--fab', fab)
    assert status == 1 and out == ''
    assert err.strip().splitlines() == [
        f"basicsr bitops: options file '{REFERENCE}': --fab {float(fab):g} is outside the candidate bits [4, 6, 8] "
        'of network_g: an average bit lies in [4, 8]'
    ]


def test_fab_range_follows_the_options_bits(tmp_path, capsys):
    path = _options_with_bits(tmp_path, [2, 3])
    assert _bitops(capsys, '-opt', path, '--fab', '2', '--fab', '3')[0] == 0
    status, _, err = _bitops(capsys, '-opt', path, '--fab', '4')
    assert status == 1 and 'candidate bits [2, 3]' in err
    status, out, _ = _bitops(capsys, '-opt', path, '--hr-size', '64x64')  # default: each candidate
    assert status == 0 and 'CADyQ FAB 2 ' in out and 'CADyQ FAB 3 ' in out


@pytest.mark.parametrize('bits', [[8, 4], [4], [1, 4], [4, 6, 9], [4, 4, 8], '4,6', [4.0, 8.0]])
def test_bad_bits_give_the_config_checks_line(tmp_path, capsys, bits):
    path = _options_with_bits(tmp_path, bits)
    with pytest.raises(ConfigError) as checked:
        check_options(read_yml(path), path, check_files=False)
    expected = [p for p in checked.value.problems if p.startswith('network_g.bits')]
    status, out, err = _bitops(capsys, '-opt', path)
    assert status == 1 and out == '' and len(expected) == 1
    assert err.strip().splitlines() == [f"basicsr bitops: options file '{path}': {expected[0]}"]


def test_bad_options_file_and_size_end_in_one_line(tmp_path, capsys):
    status, _, err = _bitops(capsys, '-opt', str(tmp_path / 'missing.yml'))
    assert status == 1 and err.strip().splitlines() == [
        f"basicsr bitops: options file '{tmp_path / 'missing.yml'}': cannot read the file: No such file or directory"]
    status, _, err = _bitops(capsys, '-opt', REFERENCE, '--hr-size', '1282x720')
    assert status == 1 and len(err.strip().splitlines()) == 1 and 'not divisible by the network scale 4' in err


def test_boundaries_are_accepted(capsys):
    status, out, _ = _bitops(capsys, '-opt', REFERENCE, '--fab', '4', '--fab', '8')
    assert status == 0
    for fab in (4, 8):  # docs/method.md#fab-and-bitops: 46.28 G of FP convs + 67.95 G quantized at W8 and A<fab>
        reported = float(re.search(rf'BitOPs CADyQ FAB {fab}\s*:\s*([\d.]+) G', out).group(1))
        assert reported == pytest.approx(46.28 + 67.95 * (8 / 32) * (fab / 32), abs=0.01)
