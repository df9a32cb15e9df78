"""The selector instrumentation: its closed-form bit-loss gradient against autograd, its rank correlation, and a
short instrumented run of a tiny CADyQ stage with the reference bit loss and with a budget."""
import os

import pytest
import torch
from tiny_workspace import make_tiny_pairs, tiny_stage_options

import cadyq_plugin  # noqa: F401  (compat shim before basicsr)
from basicsr.archs import build_network
from cadyq_plugin.models.stage_loading import load_stage_weights
from cadyq_plugin.tools import selector_probe

TINY = {'num_feat': 8, 'num_block': 1}


def test_the_bit_loss_logit_gradient_is_autograds():
    """``b / E_p[b].detach()`` with the straight-through ``b = bits[argmax] + E - E.detach()`` (the selector's)."""
    torch.manual_seed(0)
    logits = torch.randn(5, 3, requires_grad=True)
    bits = torch.tensor([4.0, 6.0, 8.0])
    probs = torch.softmax(logits, dim=1)
    expected = probs @ bits
    chosen = bits[logits.argmax(dim=1)] + expected - expected.detach()
    (3e-3 * (chosen / expected.detach()).sum()).backward()
    assert torch.allclose(selector_probe.bit_loss_logit_grad(logits.detach(), bits, 3e-3), logits.grad, atol=1e-9)


def test_spearman_is_the_rank_formula():
    x = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.3])
    y = torch.tensor([1.0, 3.0, 5.0, 4.0, 2.0])
    d = torch.tensor([1, 4, 2, 5, 3]) - torch.tensor([1, 3, 5, 4, 2])
    assert selector_probe.spearman(x, y) == pytest.approx(1 - 6 * (d**2).sum().item() / (5 * 24))
    assert selector_probe.spearman(x, -x) == pytest.approx(-1.0)


def _tiny_stage(tmp_path, bit_opt):
    """A tiny CADyQ stage's options file (the PAMS network it starts from and is distilled by, and its data, in
    ``tmp_path``) with the ``bit_opt`` changes."""
    torch.manual_seed(0)
    data = make_tiny_pairs(str(tmp_path / 'data'))
    fp = build_network({'type': 'EDSR_CADyQ', 'quant_mode': 'fp', **TINY})
    pams = build_network({'type': 'EDSR_CADyQ', 'quant_mode': 'pams', **TINY})
    load_stage_weights(pams, fp.state_dict(), 'fp')
    torch.save({'params': pams.state_dict()}, tmp_path / 'pams.pth')
    keys = {f'network_{n}.{k}': v for n in 'gt' for k, v in TINY.items()}
    keys.update({'path.pretrain_network_g': str(tmp_path / 'pams.pth'), 'name': 'probe',
                 'path.pretrain_network_t': str(tmp_path / 'pams.pth'), **bit_opt})
    return tiny_stage_options(str(tmp_path), data, 'train_edsrbaseline', 'cadyq', total_iter=4, **keys)


@pytest.mark.parametrize('bit_opt, control', [({'train.bit_opt.loss_weight': 5e-3, 'train.bit_opt.growth': 0.0},
                                              'weight'), ({'train.bit_opt.target_fab': 6.0}, 'price')],
                         ids=['reference-loss', 'budget'])
def test_a_short_instrumented_run(tmp_path, bit_opt, control):
    opt = _tiny_stage(tmp_path, bit_opt)
    rows, found = selector_probe.probe(opt, iters=4, window=2, root=str(tmp_path))
    assert found == control and [r['iter'] for r in rows] == [2, 4]
    for r in rows:
        assert 4.0 <= r['fab'] <= 8.0 and r['input'] > 0 and r['step'] >= 0
        assert (r['bit/rest'] > 0) == (control == 'weight'), 'a budget adds no bit-loss gradient'
    table = selector_probe.format_rows(rows, found)
    assert table.splitlines()[0].startswith(f'| iter | FAB | {control} |') and len(table.splitlines()) == 4
    assert not os.path.exists(tmp_path / 'experiments'), 'the probe writes nothing'


def test_the_documented_command_with_force_yml(tmp_path):
    """``basicsr selector-probe`` as docs/bit_budget.md runs it: a budget's file turned into the reference bit
    loss with a constant weight by ``--force_yml``; it prints one row per window and the table."""
    import subprocess
    import sys
    opt = _tiny_stage(tmp_path, {'train.bit_opt.target_fab': 6.0})
    proc = subprocess.run([sys.executable, '-m', 'cadyq_plugin.cli', 'selector-probe', '-opt', opt, '--iters', '4', '--window', '2', '--force_yml',
                           'train:bit_opt:target_fab=~', 'train:bit_opt:loss_weight=0.004', 'train:bit_opt:growth=0'],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index('| iter | FAB | weight |'):].splitlines()
    assert len(table) == 4 and [row.split('|')[1].strip() for row in table[2:]] == ['2', '4']
    assert not os.path.exists(tmp_path / 'experiments'), 'the probe writes nothing'
