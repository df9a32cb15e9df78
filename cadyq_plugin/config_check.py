"""Checking an options file before any work starts (no directory made, no data read, no model built).

:func:`check_options` is a pure function of the parsed options and the yml path: it collects every problem it
finds and raises one :class:`ConfigError` whose message names the file, and for each problem the key, the
value found and what is expected. ``basicsr train`` / ``basicsr test`` call :func:`check_command_options`
before BasicSR's pipelines start, so a typo costs seconds, not a run that dies hours later.

What is checked (see each ``_check_*``): registered names (model, arch, dataset, metric), CADyQ arch
arguments (``quant_mode``, candidate ``bits``, ``w_bits``/``a_bits``, ``calib_iters``, unknown arguments),
the teacher of a distilling stage, teacher/student agreement, pretrained checkpoint paths, dataset roots,
scale agreement, training hyper-parameters, patch-wise validation tiling and metrics the model/mode can
produce.
"""
import argparse
import inspect
import numbers
import os
from collections import OrderedDict

CADYQ_MODEL = 'CADyQModel'
QUANT_KEYS = ('quant_mode', 'w_bits', 'a_bits', 'bits', 'calib_iters', 'grad_scale')
QUANT_METRICS = ('calculate_avg_bit', 'calculate_bitops')
BAD_SAMPLE_CHOICES = ('raise', 'skip')
IO_BACKENDS = ('disk', 'lmdb', 'memcached')
SCHEDULERS = ('MultiStepLR', 'MultiStepRestartLR', 'CosineAnnealingRestartLR')
DEFAULT_MAX_BAD_STEPS = 10


class ConfigError(ValueError):
    """An options file that cannot run; ``problems`` lists one line per problem (``key = value: expected``)."""

    def __init__(self, yml_path, problems):
        self.yml_path = yml_path
        self.problems = list(problems)
        count = len(self.problems)
        super().__init__(f'options file {yml_path!r} has {count} problem{"s" if count > 1 else ""}:\n  ' +
                         '\n  '.join(self.problems))


class _Problems(list):

    def add(self, key, value, expected):
        self.append(f'{key} = {_show(value)}: {expected}')

    def missing(self, key, expected):
        self.append(f'{key} is missing: {expected}')


def _show(value):
    if isinstance(value, OrderedDict):
        value = dict(value)
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + '...'


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_count(value, minimum=1):
    """An integer >= minimum; integral floats (``!!float 5e3`` in BasicSR options) count as integers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return float(value).is_integer() and value >= minimum


def _registries():
    import cadyq_plugin  # noqa: F401  (registration, compat shim before basicsr)
    import basicsr.archs  # noqa: F401  (each basicsr subpackage fills its registry on import)
    import basicsr.data  # noqa: F401
    import basicsr.losses  # noqa: F401
    import basicsr.metrics  # noqa: F401
    import basicsr.models  # noqa: F401
    from basicsr.utils import registry
    return registry


def _model_class(opt):
    registry = _registries()
    name = opt.get('model_type')
    return registry.MODEL_REGISTRY.get(name) if name in registry.MODEL_REGISTRY else None


def _is_cadyq_model(opt):
    from cadyq_plugin.models.cadyq_model import CADyQModel
    cls = _model_class(opt)
    return cls is not None and issubclass(cls, CADyQModel)


# --------------------------------------------------------------------------------------------- networks
def _resolve_network(net_opt, key, problems):
    """Check one ``network_*`` section; return its arguments with the arch's defaults filled in (CADyQ archs
    only; ``None`` for other archs or when the type is unknown)."""
    registry = _registries()
    from cadyq_plugin.archs.cadyq_net import CADyQNet
    from cadyq_plugin.quant.bit_selector import check_candidate_bits
    from cadyq_plugin.quant.modes import QUANT_MODES
    if not isinstance(net_opt, dict):
        problems.add(key, net_opt, 'expected a section with at least a type')
        return None
    arch_type = net_opt.get('type')
    if arch_type not in registry.ARCH_REGISTRY:
        cadyq_archs = sorted(n for n, c in registry.ARCH_REGISTRY._obj_map.items()
                             if isinstance(c, type) and issubclass(c, CADyQNet))
        problems.add(f'{key}.type', arch_type, f'expected a registered arch, e.g. one of {cadyq_archs}')
        return None
    cls = registry.ARCH_REGISTRY.get(arch_type)
    if not (isinstance(cls, type) and issubclass(cls, CADyQNet)):
        return None
    params = inspect.signature(cls).parameters
    open_ended = any(p.kind == p.VAR_KEYWORD for p in params.values())
    if not open_ended:
        for name in net_opt:
            if name != 'type' and name not in params:
                problems.add(f'{key}.{name}', net_opt[name], f'not an argument of {arch_type}; its arguments are '
                             f'{sorted(params)}')
    resolved = {name: p.default for name, p in params.items() if p.default is not p.empty}
    resolved.update((name, value) for name, value in net_opt.items() if open_ended or name in params or name == 'type')
    if resolved.get('quant_mode') not in QUANT_MODES:
        problems.add(f'{key}.quant_mode', resolved.get('quant_mode'), f'expected one of {list(QUANT_MODES)}')
    try:
        check_candidate_bits(resolved.get('bits'))
    except ValueError:
        problems.add(f'{key}.bits', resolved.get('bits'), 'expected a sorted list of at least 2 distinct integers '
                     'in 2..8, e.g. [4, 6, 8]')
    for name in ('w_bits', 'a_bits'):
        value = resolved.get(name)
        if not (_is_int(value) and 2 <= value <= 32):
            problems.add(f'{key}.{name}', value, 'expected an integer in 2..32')
    if not _is_count(resolved.get('calib_iters'), 0):
        problems.add(f'{key}.calib_iters', resolved.get('calib_iters'), 'expected an integer >= 0 (calibration '
                     'iterations; 0 keeps the loaded ranges)')
    if resolved.get('backend', 'fake') not in ('fake', 'int8'):
        problems.add(f'{key}.backend', resolved.get('backend'), "expected 'fake' or 'int8'")
    if not _is_int(resolved.get('upscale')) or resolved.get('upscale') < 1:
        problems.add(f'{key}.upscale', resolved.get('upscale'), 'expected a positive integer')
    return resolved


def _check_networks(opt, phase, problems):
    student = teacher = None
    if opt.get('network_g') is None:
        problems.missing('network_g', 'the network to train or test')
    else:
        student = _resolve_network(opt['network_g'], 'network_g', problems)
    if opt.get('network_t') is not None:
        teacher = _resolve_network(opt['network_t'], 'network_t', problems)
    if student is not None and teacher is not None:
        if student['type'] != teacher['type']:
            problems.add('network_t.type', teacher['type'], f'expected {student["type"]!r} like network_g: the teacher '
                         'must be the same backbone as the student')
        for name in sorted(set(student) | set(teacher)):
            if name in QUANT_KEYS or name == 'type' or student['type'] != teacher['type']:
                continue
            if student.get(name) != teacher.get(name):
                what = 'scale' if name == 'upscale' else 'size'
                problems.add(f'network_t.{name}', teacher.get(name), f'expected {student.get(name)!r} like '
                             f'network_g.{name}: the teacher must have the student\'s {what}')
    return student, teacher


# --------------------------------------------------------------------------------------------- sections
def _check_general(opt, phase, problems):
    registry = _registries()
    if not isinstance(opt.get('name'), str) or not opt.get('name'):
        problems.add('name', opt.get('name'), 'expected the experiment name (a non-empty string)')
    model_type = opt.get('model_type')
    if model_type not in registry.MODEL_REGISTRY:
        problems.add('model_type', model_type, f'expected a registered model, e.g. {CADYQ_MODEL!r} or \'SRModel\'')
    num_gpu = opt.get('num_gpu', 'auto')
    if num_gpu != 'auto':
        if not _is_int(num_gpu) or num_gpu < 0:
            problems.add('num_gpu', num_gpu, "expected 'auto' or an integer >= 0 (0 = CPU)")
        else:
            import torch
            available = torch.cuda.device_count()
            if num_gpu > available:
                problems.add('num_gpu', num_gpu, f'expected at most {available} (GPUs visible here); use 0 or '
                             "'auto' on a CPU machine")
    seed = opt.get('manual_seed')
    if seed is not None and not _is_int(seed):
        problems.add('manual_seed', seed, 'expected an integer (or ~ for a random seed)')


def _check_scale(opt, student, problems):
    scale = opt.get('scale')
    if scale is None:
        problems.missing('scale', 'the upscaling factor of the datasets (BasicSR passes it to every dataset)')
        return
    if not _is_int(scale) or scale < 1:
        problems.add('scale', scale, 'expected a positive integer')
        return
    if student is not None and student.get('upscale') != scale:
        problems.add('scale', scale, f'expected {student.get("upscale")} = network_g.upscale: the datasets must be '
                     'made for the network\'s scale')
    for phase, dataset in (opt.get('datasets') or {}).items():
        if isinstance(dataset, dict) and dataset.get('scale') not in (None, scale):
            problems.add(f'datasets.{phase}.scale', dataset['scale'], f'expected {scale} like the top-level scale')


def _check_paths(opt, phase, resuming, check_files, problems):
    path = opt.get('path')
    if path is None:
        path = {}
    if not isinstance(path, dict):
        problems.add('path', path, 'expected a section')
        return
    for key in ('pretrain_network_g', 'pretrain_network_t'):
        value = path.get(key)
        if value is None:
            continue
        if key == 'pretrain_network_g' and resuming:
            continue  # BasicSR replaces it with the resumed iteration's checkpoint
        if not isinstance(value, str):
            problems.add(f'path.{key}', value, 'expected the path of a checkpoint file')
        elif check_files and not os.path.isfile(os.path.expanduser(value)):
            problems.add(f'path.{key}', value, 'expected an existing checkpoint file (run the previous stage or '
                         'convert a checkpoint first)')
    resume_state = path.get('resume_state')
    if resume_state is not None and check_files and not os.path.isfile(os.path.expanduser(str(resume_state))):
        problems.add('path.resume_state', resume_state, 'expected an existing training state file')


def _check_teacher(opt, phase, student, problems):
    train = opt.get('train') or {}
    path = opt.get('path') or {}
    cadyq_model = _is_cadyq_model(opt)
    model_type = opt.get('model_type')
    if phase == 'train' and not cadyq_model and _model_class(opt) is not None:
        for key in ('kd_opt', 'bit_opt'):
            if train.get(key) is not None:
                problems.add(f'train.{key}', train[key]['type'] if isinstance(train[key], dict) else train[key],
                             f'is ignored by model_type {model_type!r}: use model_type {CADYQ_MODEL!r}')
        if opt.get('network_t') is not None:
            problems.add('network_t', opt['network_t'], f'is ignored by model_type {model_type!r}: use model_type '
                         f'{CADYQ_MODEL!r} for a teacher')
    if not cadyq_model:
        return
    if phase == 'train' and train.get('kd_opt') is not None:
        if opt.get('network_t') is None:
            problems.missing('network_t', 'train.kd_opt distils from a teacher: add network_t (the previous stage\'s '
                             'network) and path.pretrain_network_t')
    if opt.get('network_t') is not None and path.get('pretrain_network_t') is None:
        problems.missing('path.pretrain_network_t', 'network_t is set, so the teacher needs its weights (the '
                         'previous stage\'s checkpoint)')
    if phase == 'train' and train.get('bit_opt') is not None and student is not None:
        if student.get('quant_mode') in ('fp', 'pams'):
            problems.add('train.bit_opt', train['bit_opt'].get('type') if isinstance(train['bit_opt'], dict) else
                         train['bit_opt'], f'needs network_g.quant_mode cadyq (bit selectors); it is '
                         f'{student.get("quant_mode")!r}, so the bit loss would silently do nothing')


def _check_datasets(opt, phase, check_files, problems):
    registry = _registries()
    datasets = opt.get('datasets')
    if not isinstance(datasets, dict) or not datasets:
        problems.missing('datasets', 'at least one dataset section')
        return
    if phase == 'train' and 'train' not in datasets:
        problems.missing('datasets.train', 'the training dataset')
    for name, dataset in datasets.items():
        key = f'datasets.{name}'
        kind = name.split('_')[0]
        allowed = ('train', 'val') if phase == 'train' else ('test', 'val')
        if kind not in allowed:
            problems.add(key, name, f'expected a section named {" / ".join(k + "[_N]" for k in allowed)}')
            continue
        if not isinstance(dataset, dict):
            problems.add(key, dataset, 'expected a dataset section')
            continue
        if dataset.get('type') not in registry.DATASET_REGISTRY:
            problems.add(f'{key}.type', dataset.get('type'), "expected a registered dataset, e.g. "
                         "'CADyQPairedImageDataset'")
        backend = (dataset.get('io_backend') or {}).get('type') if isinstance(dataset.get('io_backend'), dict) \
            else None
        if backend not in IO_BACKENDS:
            problems.add(f'{key}.io_backend.type', backend, f'expected one of {list(IO_BACKENDS)}')
        for root_key in ('dataroot_gt', 'dataroot_lq'):
            root = dataset.get(root_key)
            if root is None or not check_files or backend == 'memcached':
                continue
            root = os.path.expanduser(str(root))
            if not os.path.isdir(root):
                problems.add(f'{key}.{root_key}', dataset[root_key], 'expected an existing folder' +
                             (' (an LMDB folder)' if backend == 'lmdb' else ''))
            elif backend == 'lmdb' and not os.path.isfile(os.path.join(root, 'meta_info.txt')):
                problems.add(f'{key}.{root_key}', dataset[root_key], 'expected an LMDB folder with meta_info.txt '
                             '(made by scripts/prepare_*.py or BasicSR\'s create_lmdb)')
        policy = dataset.get('on_bad_sample')
        if policy is not None:
            if policy not in BAD_SAMPLE_CHOICES:
                problems.add(f'{key}.on_bad_sample', policy, f'expected one of {list(BAD_SAMPLE_CHOICES)}')
            elif policy == 'skip' and kind != 'train':
                problems.add(f'{key}.on_bad_sample', policy, "expected 'raise': a validation/test set cannot skip "
                             'images (its metrics would silently cover fewer of them)')
            if dataset.get('type') == 'PairedImageDataset':
                problems.add(f'{key}.type', dataset['type'], "expected 'CADyQPairedImageDataset': on_bad_sample is "
                             'ignored by PairedImageDataset')
        if kind == 'train':
            _check_train_dataset(opt, dataset, key, problems)


def _check_train_dataset(opt, dataset, key, problems):
    scale = opt.get('scale')
    gt_size = dataset.get('gt_size')
    if not _is_count(gt_size):
        problems.add(f'{key}.gt_size', gt_size, 'expected a positive integer (HR patch size)')
    elif _is_int(scale) and scale > 0 and gt_size % scale:
        problems.add(f'{key}.gt_size', gt_size, f'expected a multiple of scale {scale} (the LR patch is '
                     'gt_size / scale)')
    for name, minimum in (('batch_size_per_gpu', 1), ('num_worker_per_gpu', 0)):
        if not _is_count(dataset.get(name), minimum):
            problems.add(f'{key}.{name}', dataset.get(name), f'expected an integer >= {minimum}')
    ratio = dataset.get('dataset_enlarge_ratio', 1)
    if not _is_count(ratio):
        problems.add(f'{key}.dataset_enlarge_ratio', ratio, 'expected a positive integer')
    if dataset.get('prefetch_mode') not in (None, 'cpu', 'cuda'):
        problems.add(f'{key}.prefetch_mode', dataset['prefetch_mode'], "expected ~, 'cpu' or 'cuda'")


def _check_train(opt, problems):
    train = opt.get('train')
    if not isinstance(train, dict):
        problems.missing('train', 'the training section (losses, optimizers, total_iter)')
        return
    if not _is_count(train.get('total_iter')):
        problems.add('train.total_iter', train.get('total_iter'), 'expected a positive integer')
    if 'max_bad_steps' in train and not _is_count(train['max_bad_steps']):
        problems.add('train.max_bad_steps', train['max_bad_steps'], 'expected a positive integer (consecutive '
                     f'non-finite steps before training stops; default {DEFAULT_MAX_BAD_STEPS})')
    optim_g = train.get('optim_g')
    if not isinstance(optim_g, dict) or 'type' not in optim_g:
        problems.missing('train.optim_g.type', 'the optimizer of the network weights, e.g. Adam')
    elif _is_cadyq_model(opt):
        import torch
        for key in ('optim_g', 'optim_selector'):
            section = train.get(key)
            optim_type = section.get('type') if isinstance(section, dict) else None
            if section is not None and not isinstance(getattr(torch.optim, str(optim_type), None), type):
                problems.add(f'train.{key}.type', optim_type, 'expected a torch.optim class name such as Adam')
    elif optim_g['type'] != 'Adam':
        problems.add('train.optim_g.type', optim_g['type'], f"expected 'Adam' (the only optimizer BasicSR's "
                     f"{opt.get('model_type')} builds)")
    scheduler = train.get('scheduler')
    if isinstance(scheduler, dict) and scheduler.get('type') not in SCHEDULERS:
        problems.add('train.scheduler.type', scheduler.get('type'), f'expected one of {list(SCHEDULERS)}')
    if train.get('pixel_opt') is None and train.get('perceptual_opt') is None:
        problems.missing('train.pixel_opt', 'a pixel loss (e.g. L1Loss)')
    logger = opt.get('logger') or {}
    for name in ('print_freq', 'save_checkpoint_freq'):
        if not _is_count(logger.get(name)):
            problems.add(f'logger.{name}', logger.get(name), 'expected a positive integer (iterations)')
    val = opt.get('val')
    if isinstance(val, dict) and not _is_count(val.get('val_freq')):
        problems.add('val.val_freq', val.get('val_freq'), 'expected a positive integer (iterations)')


def _check_val(opt, phase, student, problems):
    registry = _registries()
    val = opt.get('val')
    if val is None:
        if phase == 'test':
            problems.missing('val', 'the test settings (save_img, metrics)')
        return
    if not isinstance(val, dict):
        problems.add('val', val, 'expected a section')
        return
    if phase == 'test' and 'save_img' not in val:
        problems.missing('val.save_img', 'true or false (whether to write the SR images)')
    cadyq_model = _is_cadyq_model(opt)
    model_type = opt.get('model_type')
    metrics = val.get('metrics') or {}
    if not isinstance(metrics, dict):
        problems.add('val.metrics', metrics, 'expected a section of named metrics')
        metrics = {}
    for name, metric in metrics.items():
        metric_type = metric.get('type') if isinstance(metric, dict) else None
        key = f'val.metrics.{name}.type'
        if metric_type not in registry.METRIC_REGISTRY:
            problems.add(key, metric_type, 'expected a registered metric (calculate_psnr, calculate_ssim, '
                         'calculate_avg_bit, calculate_bitops, ...)')
        elif metric_type in QUANT_METRICS and not cadyq_model:
            problems.add(key, metric_type, f'cannot be produced by model_type {model_type!r}: it needs the bit record '
                         f'of model_type {CADYQ_MODEL!r}')
        elif (metric_type == 'calculate_avg_bit' and student is not None and student.get('quant_mode') == 'fp'):
            problems.add(key, metric_type, 'cannot be produced by network_g.quant_mode fp (no quantized '
                         'activations); remove it or use pams/cadyq')
    patchwise = val.get('patchwise')
    if patchwise is not None:
        _check_patchwise(opt, patchwise, cadyq_model, problems)


def _check_patchwise(opt, patchwise, cadyq_model, problems):
    """``val.patchwise: {patch, step, batch}`` (SPEC §6): positive integers with ``step <= patch`` (else the centre
    crops leave gaps) and ``(patch - step) * scale`` even (the HR margin ``s = (patch - step) / 2 * scale`` each
    patch gives up on each side must be whole pixels, or the crops are not centred)."""
    if not isinstance(patchwise, dict):
        problems.add('val.patchwise', patchwise, 'expected {patch: 96, step: 90, batch: N}')
        return
    if not cadyq_model:
        problems.add('val.patchwise', dict(patchwise), f'is ignored by model_type {opt.get("model_type")!r}: use '
                     f'{CADYQ_MODEL!r}')
    unknown = sorted(set(patchwise) - {'patch', 'step', 'batch'})
    for name in unknown:
        problems.add(f'val.patchwise.{name}', patchwise[name], 'not a patch-wise setting (patch, step, batch)')
    values = {}
    for name in ('patch', 'step', 'batch'):
        value = patchwise.get(name, 1 if name == 'batch' else None)
        if not _is_int(value) or value < 1:
            problems.add(f'val.patchwise.{name}', value, 'expected a positive integer' +
                         (' (LR pixels)' if name != 'batch' else ' (patches per forward)'))
        else:
            values[name] = value
    patch, step = values.get('patch'), values.get('step')
    if patch is None or step is None:
        return
    scale = opt.get('scale') if _is_int(opt.get('scale')) else 1
    if step > patch:
        problems.add('val.patchwise.step', step, f'expected <= patch ({patch}): the kept centres would leave gaps')
    elif (patch - step) * scale % 2:
        problems.add('val.patchwise.step', step, f'expected (patch - step) * scale even: each patch drops '
                     f'(patch - step) / 2 * scale = {(patch - step) * scale / 2:g} HR pixels per side, which must be '
                     'whole pixels (e.g. step = patch - 6)')


# --------------------------------------------------------------------------------------------- entry points
def check_options(opt, yml_path, phase='train', resuming=False, check_files=True):
    """Raise :class:`ConfigError` listing every problem of ``opt`` (parsed from ``yml_path``); return None.

    Args:
        opt (dict): options as parsed from the yml (BasicSR's ordered dicts), ``--force_yml`` applied.
        yml_path (str): the file, for the message.
        phase (str): ``train`` or ``test``.
        resuming (bool): a training state will be resumed (``pretrain_network_g`` is then replaced by BasicSR).
        check_files (bool): check that checkpoints and dataset folders exist.

    ``opt`` is not modified.
    """
    if phase not in ('train', 'test'):
        raise ValueError(f"phase must be 'train' or 'test', got {phase!r}")
    problems = _Problems()
    if not isinstance(opt, dict):
        raise ConfigError(yml_path, [f'the file holds {_show(opt)}, expected a mapping of options'])
    _check_general(opt, phase, problems)
    student, _ = _check_networks(opt, phase, problems)
    _check_scale(opt, student, problems)
    _check_teacher(opt, phase, student, problems)
    _check_paths(opt, phase, resuming, check_files, problems)
    _check_datasets(opt, phase, check_files, problems)
    if phase == 'train':
        _check_train(opt, problems)
    _check_val(opt, phase, student, problems)
    if problems:
        raise ConfigError(yml_path, problems)


def read_yml(yml_path):
    """Parse ``yml_path`` the way BasicSR does; unreadable or invalid files raise :class:`ConfigError`."""
    import yaml
    _registries()
    from basicsr.utils.options import ordered_yaml
    try:
        with open(yml_path, mode='r') as f:
            return yaml.load(f, Loader=ordered_yaml()[0])
    except OSError as err:
        raise ConfigError(yml_path, [f'cannot read the file: {err.strerror}']) from err
    except yaml.YAMLError as err:
        raise ConfigError(yml_path, [f'not valid YAML: {err}']) from err


def apply_force_yml(opt, entries, yml_path):
    """Apply BasicSR's ``--force_yml a:b=value`` overrides (same value parsing) to ``opt`` in place."""
    from basicsr.utils.options import _postprocess_yml_value
    for entry in entries or ():
        if '=' not in entry:
            raise ConfigError(yml_path, [f'--force_yml {entry!r}: expected key:subkey=value'])
        keys, value = (part.strip() for part in entry.split('=', 1))
        node, path = opt, keys.split(':')
        for depth, key in enumerate(path[:-1]):
            if not isinstance(node.get(key) if isinstance(node, dict) else None, dict):
                raise ConfigError(yml_path, [f'--force_yml {entry!r}: {":".join(path[:depth + 1])} is not a section '
                                             'of the options (--force_yml cannot create sections)'])
            node = node[key]
        node[path[-1]] = _postprocess_yml_value(value)
    return opt


def will_resume(opt, auto_resume, root):
    """Whether BasicSR will resume a training state for these options (``--auto_resume`` or
    ``path.resume_state``)."""
    if (opt.get('path') or {}).get('resume_state'):
        return True
    if not auto_resume:
        return False
    state_dir = os.path.join(root, 'experiments', str(opt.get('name')), 'training_states')
    return os.path.isdir(state_dir) and any(name.endswith('.state') for name in os.listdir(state_dir))


def check_command_options(command, args, root):
    """Check the options of ``basicsr train|test`` (its argument list ``args``) before anything runs."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument('-opt', required=False)
    parser.add_argument('--auto_resume', action='store_true')
    parser.add_argument('--debug', action='store_true')
    parser.add_argument('--force_yml', nargs='+', default=None)
    known, _ = parser.parse_known_args(args)
    if known.opt is None:
        return  # BasicSR's own parser reports the missing -opt
    opt = apply_force_yml(read_yml(known.opt), known.force_yml, known.opt)
    if isinstance(opt, dict) and known.debug and isinstance(opt.get('name'), str) and \
            not opt['name'].startswith('debug'):
        opt['name'] = 'debug_' + opt['name']
    phase = 'train' if command == 'train' else 'test'
    resuming = phase == 'train' and isinstance(opt, dict) and will_resume(opt, known.auto_resume, root)
    check_options(opt, known.opt, phase=phase, resuming=resuming)
