"""Operations one eager training step dispatches (counted by the benchmark's dispatch recorder): an upper bound per
backbone, and a selector whose cost does not grow with its candidates (one fused computation for all K)."""
import pytest
import torch

import cadyq_plugin  # noqa: F401  (before basicsr: import-time fixes)
from cadyq_plugin.quant import BitRecord, BitSelector
from cadyq_plugin.tools.benchmark import OpCounter, step_op_counts

# Default depths (the count does not depend on the width); the bounds are multiples of BasicSR's own FP step
# (SRModel, its per-parameter Adam). Before the fused quantizers (batch 4): EDSR 10,661 operations (11.0x),
# CARN 6,151 (6.4x), IDN 7,342 (9.2x), SRResNet 11,138 (6.2x); the target is 3x. Now (docs/training_speed.md):
# EDSR 3.54x, CARN 2.08x, IDN 2.84x, SRResNet 2.03x.
BOUNDS = {
    'EDSR_CADyQ': ({'num_feat': 8}, 3.6),
    'CARN_CADyQ': ({'num_feat': 8}, 2.15),
    'IDN_CADyQ': ({'num_feat': 16, 'd': 4}, 2.9),
    'SRResNet_CADyQ': ({'num_feat': 8}, 2.1),
}


@pytest.mark.parametrize('arch', list(BOUNDS))
def test_operations_of_a_training_step(arch):
    """One CADyQ step (student forward and backward, PAMS teacher, distillation, bit loss, step guard, optimizer
    steps) dispatches at most the bound times the operations of BasicSR's FP step; a PAMS step at most 2x."""
    kwargs, bound = BOUNDS[arch]
    counts = step_op_counts({'type': arch, **kwargs}, batch=2, patch=32, scale=4)
    assert counts['cadyq'] <= bound * counts['fp_basicsr'], counts
    assert counts['pams'] <= 2.0 * counts['fp_basicsr'], counts
    assert counts['fp'] < counts['fp_basicsr'], 'the plugin updates all parameters of a group in one fused operation'


def selector_step_ops(bits):
    selector = BitSelector(8, bits)
    selector.index = 0
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    record = BitRecord(torch.rand(2, 2), 2, 'cpu')
    counter = OpCounter()
    with counter:
        y = selector(x, record)
        (y.sum() + record.bits().sum()).backward()
    return counter.ops


def test_a_selector_costs_the_same_for_any_number_of_candidates():
    """The K candidate quantizers run as one computation in forward and backward: going from 2 to 4 candidates
    adds only autograd's hand-over of the two extra range parameters' gradients."""
    extra = selector_step_ops([2, 4, 6, 8])
    extra.subtract(selector_step_ops([4, 8]))
    assert +extra == {'aten.detach': 2} and not -extra


def test_the_benchmark_prints_the_counts_and_step_times(capsys):
    """``basicsr benchmark`` on tiny inputs (one repetition, eager only): the operation counts and the
    training-step line with its ratios."""
    from cadyq_plugin.tools.benchmark import main
    assert main(['--archs', 'CARN_CADyQ', '--batch', '1', '--patch', '16', '--repeats', '1', '--warmup', '0',
                 '--skip', 'compiled', 'infer', 'patchwise', 'memory', 'backends']) == 0
    out = capsys.readouterr().out
    assert 'operations of one eager training step: FP ' in out and '(BasicSR SRModel FP ' in out
    assert 'training step (median wall time; batch 1, HR patch 16, ratios to the eager FP step): eager FP ' in out
    assert 'eager CADyQ' in out and 'compiled' not in out.split('targets:')[0]
