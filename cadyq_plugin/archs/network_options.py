"""What a ``network_*`` section of the options resolves to, checked without building the network: the arch's
arguments with its defaults filled in, each CADyQ argument's problem, and whether a teacher fits its student.

The options check (:mod:`cadyq_plugin.config_check`) reports these lines for a file; the distilling model asks
:func:`teacher_mismatches` too, for options that never went through the check.
"""
import inspect

from cadyq_plugin.archs.cadyq_net import QUANT_ARGS, CADyQNet
from cadyq_plugin.problems import Problems, did_you_mean, is_count, is_int
from cadyq_plugin.quant.bit_selector import CANDIDATE_BITS, check_candidate_bits
from cadyq_plugin.quant.fp_layers import FP_LAYER_BITS
from cadyq_plugin.quant.int8 import BACKENDS
from cadyq_plugin.quant.modes import FIXED_BITS, QUANT_MODES
from cadyq_plugin.registries import lookup, registered_names

BITS_EXPECTED = ('expected a sorted list of at least 2 distinct integers in {}..{}, e.g. [4, 6, 8]'.format(
    *CANDIDATE_BITS))


def bits_problem(bits, key):
    """The check's line for bad candidate ``bits`` at ``key``, or None: one wording for every command."""
    try:
        check_candidate_bits(bits)
    except ValueError:
        problems = Problems()
        problems.add(key, bits, BITS_EXPECTED)
        return problems[0]
    return None


def resolve_network(net_opt, key, problems):
    """Check one ``network_*`` section; return its arguments with the arch's defaults filled in (CADyQ archs
    only; ``None`` for other archs or when the type is unknown)."""
    if not isinstance(net_opt, dict):
        problems.add(key, net_opt, 'expected a section with at least a type')
        return None
    arch_type = net_opt.get('type')
    cls = lookup('ARCH', arch_type)
    if cls is None:
        problems.add(f'{key}.type', arch_type, 'expected a registered arch' + did_you_mean(
            arch_type, registered_names('ARCH')))
        return None
    if not (isinstance(cls, type) and issubclass(cls, CADyQNet)):
        return None
    params = inspect.signature(cls).parameters
    open_ended = any(p.kind == p.VAR_KEYWORD for p in params.values())
    if not open_ended:
        known = set(params) | {'type'}
        for name in net_opt:
            if name not in known:
                problems.add(f'{key}.{name}', net_opt[name], f'not an argument of {arch_type}' +
                             (did_you_mean(name, known) or f'; its arguments are {sorted(params)}'))
    resolved = {name: p.default for name, p in params.items() if p.default is not p.empty}
    resolved.update((name, value) for name, value in net_opt.items() if open_ended or name in params or name == 'type')
    _check_wrapper(cls, net_opt, key, resolved, problems)
    _check_quant_args(resolved, key, problems)
    if not is_int(resolved.get('upscale')) or resolved.get('upscale') < 1:
        problems.add(f'{key}.upscale', resolved.get('upscale'), 'expected a positive integer')
    return resolved


def _check_quant_args(resolved, key, problems):
    if resolved.get('quant_mode') not in QUANT_MODES:
        problems.add(f'{key}.quant_mode', resolved.get('quant_mode'), f'expected one of {list(QUANT_MODES)}')
    bits_line = bits_problem(resolved.get('bits'), f'{key}.bits')
    if bits_line:
        problems.append(bits_line)
    low, high = FIXED_BITS
    for name in ('w_bits', 'a_bits'):
        value = resolved.get(name)
        if not (is_int(value) and low <= value <= high):
            problems.add(f'{key}.{name}', value, f'expected an integer in {low}..{high}')
    if not is_count(resolved.get('calib_iters'), 0):
        problems.add(f'{key}.calib_iters', resolved.get('calib_iters'), 'expected an integer >= 0 (calibration '
                     'iterations; 0 keeps the loaded ranges)')
    if resolved.get('backend', BACKENDS[0]) not in BACKENDS:
        problems.add(f'{key}.backend', resolved.get('backend'), 'expected ' + ' or '.join(map(repr, BACKENDS)))
    fp_layer_bits, (low, high) = resolved.get('fp_layer_bits'), FP_LAYER_BITS
    if fp_layer_bits is not None and not (is_int(fp_layer_bits) and low <= fp_layer_bits <= high):
        problems.add(f'{key}.fp_layer_bits', fp_layer_bits, 'expected null (FP layers stay full precision) or an '
                     f'integer in {low}..{high} (bits of the weights and inputs of the convs outside the CADyQ set)')


def _check_wrapper(cls, net_opt, key, resolved, problems):
    """A ``CADyQWrapper`` section: its backbone, patterns and traced forward pass are checked now (see
    ``check_wrapper_options``), and its scale is the backbone's."""
    from cadyq_plugin.archs.wrapper_arch import CADyQWrapper, WrapperConfigError, check_wrapper_options
    if not issubclass(cls, CADyQWrapper):
        return
    try:
        resolved['upscale'] = check_wrapper_options(net_opt)
    except WrapperConfigError as err:
        resolved['upscale'] = err.upscale
        problems.extend(f'{key}.{problem}' for problem in err.problems)


def compare_teacher(student, teacher, problems):
    """Problems of a resolved teacher that is not the student's backbone, scale and size (its quantization may
    differ)."""
    if student['type'] != teacher['type']:
        problems.add('network_t.type', teacher['type'], f'expected {student["type"]!r} like network_g: the teacher '
                     'must be the same backbone as the student')
        return
    for name in sorted(set(student) | set(teacher)):
        if name in QUANT_ARGS or name == 'type':
            continue
        if student.get(name) != teacher.get(name):
            what = 'scale' if name == 'upscale' else 'size'
            problems.add(f'network_t.{name}', teacher.get(name), f'expected {student.get(name)!r} like '
                         f'network_g.{name}: the teacher must have the student\'s {what}')


def teacher_mismatches(student_opt, teacher_opt):
    """What makes ``network_t`` unfit to teach ``network_g`` (another backbone, scale or size), as problem lines."""
    problems = Problems()
    student = resolve_network(student_opt, 'network_g', problems)
    teacher = resolve_network(teacher_opt, 'network_t', problems)
    if student is not None and teacher is not None:
        compare_teacher(student, teacher, problems)
    return list(problems)
