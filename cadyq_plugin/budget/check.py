"""A bit budget the selectors can meet (``train.bit_opt.target_fab`` / ``target_bitops``, or ``val.target_*`` in
a test options file)."""
import inspect

from cadyq_plugin.budget.controller import RETIRED_KEYS, budget_problems
from cadyq_plugin.registries import lookup

TARGET_KEYS = ('target_fab', 'target_bitops')
# the controller's settings: what budget_problems checks besides the targets (and the retired keys it refuses)
CONTROLLER_KEYS = tuple(name for name, p in inspect.signature(budget_problems).parameters.items()
                        if p.kind is p.POSITIONAL_OR_KEYWORD and name not in TARGET_KEYS)


def check_bit_budget(opt, phase, student, problems, distilling):
    """A bit budget the selectors can meet: ``train.bit_opt.target_fab`` / ``target_bitops`` (``val.target_*`` in a
    test options file, what the tested network was trained to), one target, strictly inside what every selector at
    its lowest / highest candidate gives, on a cadyq network. The BitOPs range is counted on the network built on
    the ``meta`` device (shapes only, no weights). ``distilling``: whether the file's model is a ``CADyQModel``, the
    model that reports a budget (the options check knows the models; this package does not import them)."""
    val = opt.get('val') if isinstance(opt.get('val'), dict) else {}
    val_targets = {k: val[k] for k in TARGET_KEYS if val.get(k) is not None}
    if phase == 'train':
        for key, value in val_targets.items():
            problems.add(f'val.{key}', value, f'is for test options files: train to it with train.bit_opt.{key} '
                         '(validation then reports it)')
        bit_opt = (opt.get('train') or {}).get('bit_opt') if isinstance(opt.get('train'), dict) else None
        where, section = 'train.bit_opt', bit_opt if isinstance(bit_opt, dict) else {}
    else:
        where, section = 'val', val_targets
    targets = {k: section[k] for k in TARGET_KEYS if section.get(k) is not None}
    retired = {k: section[k] for k in RETIRED_KEYS if k in section} if phase == 'train' else {}
    if not targets and not retired:
        return
    found = budget_problems(**targets, **{k: section[k] for k in CONTROLLER_KEYS if k in section}, **retired)
    for key, value, expected in found:
        problems.add(f'{where}.{key}', value, expected)
    if found:
        return
    (key, target), = targets.items()
    if phase == 'test' and not distilling:
        problems.add(f'val.{key}', target, f'is reported by model_type \'CADyQModel\', not '
                     f'{opt.get("model_type")!r}')
        return
    network = opt.get('network_g')
    if student is None:  # not a CADyQ arch (an unknown type is reported already)
        if isinstance(network, dict) and lookup('ARCH', network.get('type')) is not None:
            problems.add(f'{where}.{key}', target, f'needs a CADyQ arch with bit selectors; network_g.type is '
                         f'{network.get("type")!r}')
        return
    if student.get('quant_mode') != 'cadyq':
        if phase == 'test':  # in training, train.bit_opt on a fp/pams network is refused already
            problems.add(f'val.{key}', target, f'needs network_g.quant_mode cadyq (bit selectors); it is '
                         f'{student.get("quant_mode")!r}')
        return
    if any(p.startswith(('network_g.', 'scale ')) for p in problems):
        return  # the network cannot be built as written
    _check_reachable(network, student, where, key, target, problems)


def _check_reachable(network, student, where, key, target, problems):
    """The target strictly inside what every selector at its lowest / highest candidate gives."""
    from cadyq_plugin.budget.target import BUDGET_HR_SIZE, BitBudget
    if key == 'target_fab':
        low, high = float(min(student['bits'])), float(max(student['bits']))
    else:
        low, high = BitBudget.of_network('bitops', target, _shapes_only(network)).reachable()
    if low < target < high:
        return
    bits = student['bits']
    if key == 'target_fab':
        expected = (f'expected a FAB strictly between the smallest and largest candidate of network_g.bits {bits} '
                    f'({low:g} < target < {high:g})')
    else:
        expected = (f'expected BitOPs strictly between {low:.2f} G (every selector at {min(bits)} bits) and '
                    f'{high:.2f} G (every selector at {max(bits)}) for {_network_name(network)} at a '
                    '{}x{} output'.format(*BUDGET_HR_SIZE))
    problems.add(f'{where}.{key}', target, expected + ('; at an end every selector can only sit at that bit-width, '
                                                      'which is not a budget' if target in (low, high) else
                                                      ': the selectors cannot reach it'))


def _network_name(network):
    """``EDSR_CADyQ``, or for a wrapped network ``CADyQWrapper(SwinIR)``."""
    backbone = network.get('backbone')
    inner = f'({backbone["type"]})' if isinstance(backbone, dict) and 'type' in backbone else ''
    return f'{network["type"]}{inner}'


def _shapes_only(network):
    """``network_g`` built on the ``meta`` device (shapes, no weights: MACs without the cost of a build); a
    backbone whose constructor reads tensor values (SwinIR's drop-path rates) is built on the CPU and moved."""
    import torch
    arch = lookup('ARCH', network['type'])  # not build_network: it would start the logger
    kwargs = {name: value for name, value in network.items() if name != 'type'}
    try:
        with torch.device('meta'):
            return arch(**kwargs)
    except Exception:  # noqa: BLE001 (any constructor failure on meta: retry where values exist)
        return arch(**kwargs).to('meta')
