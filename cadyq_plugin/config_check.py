"""Checking an options file before any work starts (no directory made, no data read, no model built).

:func:`check_options` is a pure function of the parsed options and the yml path: it collects every problem it
finds and raises one :class:`ConfigError` whose message names the file, and for each problem the key, the
value found and what is expected. The plugin's pipelines call it (through :func:`cadyq_plugin.options.
parse_options`) before anything else, so a typo costs seconds, not a run that dies hours later.

What is checked (see each ``_check_*``): registered names (model, arch, dataset, metric, loss), looked up the
way BasicSR's registries do (``RealESRNetModel`` finds ``RealESRNetModel_basicsr``); CADyQ arch arguments
(``quant_mode``, candidate ``bits``, ``w_bits``/``a_bits``, ``calib_iters``); unknown keys in the plugin's own
sections (the CADyQ archs, ``CADyQPairedImageDataset``, the plugin's losses, ``val.patchwise``), with a "did you
mean"; the teacher of a distilling stage; pretrained checkpoint paths; dataset roots; scale agreement; training
numbers; patch-wise tiling; metrics the model and mode can produce; what the run's device cannot execute (the int8
backend on CUDA) and the ``determinism`` section. Requirements that belong to one model
(``scale``, ``gt_size``, a pixel loss, ...) are checked only for the models that need them, and messages about
stock BasicSR models carry no CADyQ advice: a stock options file passes unless BasicSR itself would fail on it.

:func:`known_keys` says which keys a section may hold beyond those in the file (what the models, datasets,
losses and pipelines read when present); ``--force_yml`` uses it to refuse paths that would silently do nothing.
"""
import difflib
import inspect
import numbers
import os
from collections import OrderedDict

CADYQ_MODELS = ('CADyQSRModel', 'CADyQModel')
QUANT_KEYS = ('quant_mode', 'w_bits', 'a_bits', 'bits', 'calib_iters', 'grad_scale')
QUANT_METRICS = ('calculate_avg_bit', 'calculate_bitops')
BAD_SAMPLE_CHOICES = ('raise', 'skip')
IO_BACKENDS = ('disk', 'lmdb', 'memcached')
SCHEDULERS = ('MultiStepLR', 'MultiStepRestartLR', 'CosineAnnealingRestartLR')
DEFAULT_MAX_BAD_STEPS = 10
BITS_EXPECTED = 'expected a sorted list of at least 2 distinct integers in 2..8, e.g. [4, 6, 8]'

# Keys read when present, beyond what an options file usually holds: the plugin's and BasicSR 1.4.2's (its
# models, datasets, dataloader builder and pipelines). Sections not listed here accept any key.
TOP_LEVEL_KEYS = {
    'name', 'model_type', 'scale', 'num_gpu', 'manual_seed', 'datasets', 'path', 'train', 'val', 'logger',
    'dist_params', 'find_unused_parameters', 'is_train', 'dist', 'rank', 'world_size', 'auto_resume', 'root_path',
    'determinism',
    # BasicSR's RealESRGAN/RealESRNet models read their degradation settings at the top level
    'high_order_degradation', 'l1_gt_usm', 'percep_gt_usm', 'gan_gt_usm', 'gt_usm', 'queue_size', 'gt_size',
    'resize_prob', 'resize_range', 'gaussian_noise_prob', 'noise_range', 'poisson_scale_range', 'gray_noise_prob',
    'jpeg_range', 'second_blur_prob', 'resize_prob2', 'resize_range2', 'gaussian_noise_prob2', 'noise_range2',
    'poisson_scale_range2', 'gray_noise_prob2', 'jpeg_range2'}
TRAIN_KEYS = {
    'optim_g', 'optim_alpha', 'optim_selector', 'scheduler', 'total_iter', 'warmup_iter', 'pixel_opt',
    'perceptual_opt', 'kd_opt', 'bit_opt', 'max_bad_steps', 'ema_decay',
    'optim_d', 'gan_opt', 'ldl_opt', 'feature_matching_opt', 'net_d_iters', 'net_d_init_iters', 'r1_reg_weight',
    'path_reg_weight', 'net_g_reg_every', 'net_d_reg_every', 'mixing_prob', 'lr_flow', 'fix_flow', 'flow_lr_mul',
    'dcn_lr_mul', 'tsa_iter'}
VAL_KEYS = {'val_freq', 'save_img', 'suffix', 'metrics', 'pbar', 'patchwise', 'tb_bit_maps', 'grids', 'crop_size',
            'flip_seq', 'center_frame_only', 'num_val_samples', 'target_fab', 'target_bitops'}
LOGGER_KEYS = {'print_freq', 'save_checkpoint_freq', 'use_tb_logger', 'wandb'}
PATH_PREFIXES = ('pretrain_network_', 'strict_load_', 'param_key_')
PATH_KEYS = {'resume_state', 'ignore_resume_networks', 'experiments_root', 'models', 'training_states', 'log',
             'visualization', 'results_root'}
DIST_PARAM_KEYS = {'backend', 'port', 'timeout'}
PATCHWISE_KEYS = {'patch', 'step', 'batch'}
LOADER_KEYS = {'name', 'type', 'phase', 'scale', 'num_worker_per_gpu', 'batch_size_per_gpu', 'dataset_enlarge_ratio',
               'prefetch_mode', 'pin_memory', 'persistent_workers', 'num_prefetch_queue'}
PAIRED_DATASET_KEYS = LOADER_KEYS | {'dataroot_gt', 'dataroot_lq', 'meta_info_file', 'filename_tmpl', 'io_backend',
                                     'gt_size', 'use_hflip', 'use_rot', 'color', 'mean', 'std'}
DATASET_KEYS = {'CADyQPairedImageDataset': PAIRED_DATASET_KEYS | {'on_bad_sample'},
                'PairedImageDataset': PAIRED_DATASET_KEYS}
PAIRED_TRAIN_REQUIRED = ('gt_size', 'use_hflip', 'use_rot', 'batch_size_per_gpu', 'num_worker_per_gpu')


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


def did_you_mean(name, candidates):
    """`` (did you mean 'x'?)`` for the closest of ``candidates``, or an empty string."""
    close = difflib.get_close_matches(str(name), sorted(str(c) for c in candidates), n=1, cutoff=0.6)
    return f' (did you mean {close[0]!r}?)' if close else ''


def _registries():
    import cadyq_plugin  # noqa: F401  (registration, compat shim before basicsr)
    import basicsr.archs  # noqa: F401  (each basicsr subpackage fills its registry on import)
    import basicsr.data  # noqa: F401
    import basicsr.losses  # noqa: F401
    import basicsr.metrics  # noqa: F401
    import basicsr.models  # noqa: F401
    from basicsr.utils import registry
    return registry


def lookup(registry, name):
    """``registry``'s object for ``name`` as BasicSR's ``Registry.get`` finds it (``name``, else
    ``name_basicsr``), or None; without the print BasicSR makes."""
    if not isinstance(name, str):
        return None
    objects = registry._obj_map
    return objects.get(name, objects.get(f'{name}_basicsr'))


def _model_class(opt):
    return lookup(_registries().MODEL_REGISTRY, opt.get('model_type'))


def _is_cadyq_model(opt):
    from cadyq_plugin.models import CADyQSRModel
    cls = _model_class(opt)
    return isinstance(cls, type) and issubclass(cls, CADyQSRModel)


def _is_distilling_model(opt):
    from cadyq_plugin.models import CADyQModel
    cls = _model_class(opt)
    return isinstance(cls, type) and issubclass(cls, CADyQModel)


def _needs_pixel_or_perceptual_loss(opt):
    """SRModel's training set-up (SRModel and the models that keep it) fails without either loss; GAN models
    and non-SR models build their own losses."""
    from basicsr.models.sr_model import SRModel
    from basicsr.models.srgan_model import SRGANModel
    cls = _model_class(opt)
    return isinstance(cls, type) and issubclass(cls, SRModel) and not issubclass(cls, SRGANModel)


def _signature_keys(obj):
    """Argument names of a class or function plus ``type``; None when it takes ``**kwargs`` (any key)."""
    try:
        params = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return None
    return {name for name in params if name not in ('self', 'opt')} | {'type'}


def known_keys(opt, path):
    """The keys the section at ``path`` (a tuple of keys into ``opt``) may hold, or None for any key.

    Sections with a registered ``type`` are known by the signature of what is built from them (archs, losses,
    optimizers, schedulers); datasets by :data:`DATASET_KEYS` (others accept anything, like BasicSR).
    """
    path = tuple(path)
    node = opt
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    section = node if isinstance(node, dict) else {}
    if not path:
        return TOP_LEVEL_KEYS | {k for k in opt if str(k).startswith('network_')} | {'network_g', 'network_t'}
    head = path[0]
    if len(path) == 1:
        return {'train': TRAIN_KEYS, 'val': VAL_KEYS, 'logger': LOGGER_KEYS, 'dist_params': DIST_PARAM_KEYS,
                'determinism': set(_determinism_defaults())}.get(
            head, _path_keys(section) if head == 'path' else (_arch_keys(section) if str(head).startswith(
                'network_') else None))
    if head == 'datasets' and len(path) == 2:
        return DATASET_KEYS.get(section.get('type'))
    if path == ('val', 'patchwise'):
        return PATCHWISE_KEYS
    if head == 'train' and len(path) == 2:
        return _train_section_keys(path[1], section)
    return None


def _path_keys(section):
    return PATH_KEYS | {k for k in section if str(k).startswith(PATH_PREFIXES)} | {
        prefix + net for prefix in PATH_PREFIXES for net in ('g', 't', 'd')}


def _arch_keys(section):
    cls = lookup(_registries().ARCH_REGISTRY, section.get('type'))
    return _signature_keys(cls) if cls is not None else None


def _train_section_keys(name, section):
    import torch
    if name == 'scheduler':
        from basicsr.models import lr_scheduler
        kind = section.get('type')
        cls = lr_scheduler.MultiStepRestartLR if kind in ('MultiStepLR', 'MultiStepRestartLR') else getattr(
            lr_scheduler, str(kind), None)
        keys = _signature_keys(cls) if isinstance(cls, type) else None
        return keys - {'optimizer', 'last_epoch'} if keys else None
    if str(name).startswith('optim_'):
        cls = getattr(torch.optim, str(section.get('type')), None)
        keys = _signature_keys(cls) if isinstance(cls, type) else None
        return keys - {'params'} if keys else None
    if str(name).endswith('_opt'):
        cls = lookup(_registries().LOSS_REGISTRY, section.get('type'))
        return _signature_keys(cls) if cls is not None else None
    return None


def _check_unknown_keys(opt, path, problems, known=None):
    """One problem per key of the section at ``path`` that nothing reads; returns the unknown keys."""
    node = opt
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    known = known if known is not None else known_keys(opt, path)
    if not isinstance(node, dict) or known is None:
        return []
    where = '.'.join(str(p) for p in path)
    unknown = [key for key in node if key not in known]
    for key in unknown:
        problems.add(f'{where}.{key}', node[key], 'not a known key of this section' + did_you_mean(key, known))
    return unknown


# --------------------------------------------------------------------------------------------- networks
def bits_problem(bits, key):
    """The check's line for bad candidate ``bits`` at ``key``, or None: one wording for every command."""
    from cadyq_plugin.quant.bit_selector import check_candidate_bits
    try:
        check_candidate_bits(bits)
    except ValueError:
        problems = _Problems()
        problems.add(key, bits, BITS_EXPECTED)
        return problems[0]
    return None


def _resolve_network(net_opt, key, problems):
    """Check one ``network_*`` section; return its arguments with the arch's defaults filled in (CADyQ archs
    only; ``None`` for other archs or when the type is unknown)."""
    registry = _registries()
    from cadyq_plugin.archs.cadyq_net import CADyQNet
    from cadyq_plugin.quant.modes import QUANT_MODES
    if not isinstance(net_opt, dict):
        problems.add(key, net_opt, 'expected a section with at least a type')
        return None
    arch_type = net_opt.get('type')
    cls = lookup(registry.ARCH_REGISTRY, arch_type)
    if cls is None:
        problems.add(f'{key}.type', arch_type, 'expected a registered arch' + did_you_mean(
            arch_type, registry.ARCH_REGISTRY._obj_map))
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
    if resolved.get('quant_mode') not in QUANT_MODES:
        problems.add(f'{key}.quant_mode', resolved.get('quant_mode'), f'expected one of {list(QUANT_MODES)}')
    bits_line = bits_problem(resolved.get('bits'), f'{key}.bits')
    if bits_line:
        problems.append(bits_line)
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


def _check_networks(opt, phase, problems):
    student = teacher = None
    if opt.get('network_g') is None:
        problems.missing('network_g', 'the network to train or test')
    else:
        student = _resolve_network(opt['network_g'], 'network_g', problems)
    if opt.get('network_t') is not None:
        teacher = _resolve_network(opt['network_t'], 'network_t', problems)
    if student is not None and teacher is not None:
        _compare_teacher(student, teacher, problems)
    return student, teacher


def _compare_teacher(student, teacher, problems):
    if student['type'] != teacher['type']:
        problems.add('network_t.type', teacher['type'], f'expected {student["type"]!r} like network_g: the teacher '
                     'must be the same backbone as the student')
        return
    for name in sorted(set(student) | set(teacher)):
        if name in QUANT_KEYS or name in ('type', 'backend'):
            continue
        if student.get(name) != teacher.get(name):
            what = 'scale' if name == 'upscale' else 'size'
            problems.add(f'network_t.{name}', teacher.get(name), f'expected {student.get(name)!r} like '
                         f'network_g.{name}: the teacher must have the student\'s {what}')


def teacher_mismatches(student_opt, teacher_opt):
    """What makes ``network_t`` unfit to teach ``network_g`` (another backbone, scale or size), as problem lines;
    the models ask this too, for options that never went through :func:`check_options`."""
    problems = _Problems()
    student = _resolve_network(student_opt, 'network_g', problems)
    teacher = _resolve_network(teacher_opt, 'network_t', problems)
    if student is not None and teacher is not None:
        _compare_teacher(student, teacher, problems)
    return list(problems)


# --------------------------------------------------------------------------------------------- sections
def _check_general(opt, phase, problems):
    registry = _registries()
    if not isinstance(opt.get('name'), str) or not opt.get('name'):
        problems.add('name', opt.get('name'), 'expected the experiment name (a non-empty string)')
    model_type = opt.get('model_type')
    if _model_class(opt) is None:
        problems.add('model_type', model_type, 'expected a registered model' + (
            did_you_mean(model_type, registry.MODEL_REGISTRY._obj_map) or f', e.g. {CADYQ_MODELS[-1]!r} or '
            "'SRModel'"))
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
    dist_params = opt.get('dist_params')
    if dist_params is not None and not isinstance(dist_params, dict):
        problems.add('dist_params', dist_params, f'expected a section with some of {sorted(DIST_PARAM_KEYS)}')
    elif dist_params:
        _check_unknown_keys(opt, ('dist_params',), problems)
        if dist_params.get('backend') not in (None, 'gloo', 'nccl', 'mpi'):
            problems.add('dist_params.backend', dist_params['backend'], "expected 'gloo' (CPU), 'nccl' (GPU) or ~ "
                         '(chosen by the device)')


def _determinism_defaults():
    from cadyq_plugin.determinism import DEFAULTS
    return DEFAULTS


def _check_devices(opt, student, teacher, problems):
    """The ``determinism`` section, and networks the run's device cannot execute: the int8 backend is oneDNN's
    (x86 CPUs); on a CUDA run it would stop at the first validation."""
    from cadyq_plugin.determinism import determinism_problems
    if isinstance(opt.get('determinism'), dict):
        _check_unknown_keys(opt, ('determinism',), problems)
    for key, value, expected in determinism_problems(opt.get('determinism')):
        problems.add(key, value, expected)
    num_gpu = opt.get('num_gpu', 'auto')
    if num_gpu != 'auto' and not _is_int(num_gpu):
        return  # reported by _check_general
    import torch
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not visible or num_gpu == 0:
        return
    device = f'num_gpu is {num_gpu!r} and {visible} GPU{"s are" if visible > 1 else " is"} visible'
    for key, resolved in (('network_g', student), ('network_t', teacher)):
        if resolved is not None and resolved.get('backend') == 'int8':
            problems.add(f'{key}.backend', 'int8', f'expected fake on a CUDA run ({device}): the int8 backend runs '
                         'on x86 CPUs only (oneDNN); use backend fake, or num_gpu: 0 to run on the CPU')


def _uses_paired_dataset(opt):
    return any(isinstance(d, dict) and d.get('type') in DATASET_KEYS for d in (opt.get('datasets') or {}).values())


def _check_scale(opt, student, problems):
    scale = opt.get('scale')
    if scale is None:
        if _is_cadyq_model(opt) or _uses_paired_dataset(opt):
            problems.missing('scale', 'the upscaling factor of the datasets (the pipeline passes it to every dataset)')
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
    for key, value in path.items():
        if not str(key).startswith('pretrain_network_') or value is None:
            continue
        if key == 'pretrain_network_g' and resuming:
            continue  # resuming replaces it with the resumed iteration's checkpoint
        if not isinstance(value, str):
            problems.add(f'path.{key}', value, 'expected the path of a checkpoint file')
        elif check_files and not os.path.isfile(os.path.expanduser(value)):
            problems.add(f'path.{key}', value, 'expected an existing checkpoint file' + (
                ' (run the previous stage or convert a checkpoint first)' if _is_cadyq_model(opt) else ''))
    resume_state = path.get('resume_state')
    if resume_state is not None and check_files and not os.path.isfile(os.path.expanduser(str(resume_state))):
        problems.add('path.resume_state', resume_state, 'expected an existing training state file')


def _check_teacher(opt, phase, student, problems):
    train = opt.get('train') or {}
    path = opt.get('path') or {}
    model_type = opt.get('model_type')
    distilling = _is_distilling_model(opt)
    if phase == 'train' and not distilling and _model_class(opt) is not None:
        for key in ('kd_opt', 'bit_opt'):
            if train.get(key) is not None:
                problems.add(f'train.{key}', train[key]['type'] if isinstance(train[key], dict) else train[key],
                             f'is ignored by model_type {model_type!r}: use model_type \'CADyQModel\'')
        if opt.get('network_t') is not None and _is_cadyq_model(opt):
            problems.add('network_t', opt['network_t'], f'is ignored by model_type {model_type!r}: use model_type '
                         '\'CADyQModel\' for a teacher')
    if not distilling:
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
        kind = str(name).split('_')[0]
        if phase == 'train' and kind not in ('train', 'val'):
            problems.add(key, name, 'expected a section named train or val[_N] (a test set belongs in a test '
                         'options file)')
            continue
        if not isinstance(dataset, dict):
            problems.add(key, dataset, 'expected a dataset section')
            continue
        dataset_type = dataset.get('type')
        if lookup(registry.DATASET_REGISTRY, dataset_type) is None:
            problems.add(f'{key}.type', dataset_type, 'expected a registered dataset' + (
                did_you_mean(dataset_type, registry.DATASET_REGISTRY._obj_map) or
                ", e.g. 'CADyQPairedImageDataset'"))
        unknown = _check_unknown_keys(opt, ('datasets', name), problems)
        io_backend = dataset.get('io_backend')
        backend = io_backend.get('type') if isinstance(io_backend, dict) else None
        if (io_backend is not None or dataset_type in DATASET_KEYS) and backend not in IO_BACKENDS:
            problems.add(f'{key}.io_backend.type', backend, f'expected one of {list(IO_BACKENDS)}')
        for root_key in ('dataroot_gt', 'dataroot_lq'):
            root = dataset.get(root_key)
            if root is None or not check_files or backend == 'memcached':
                continue
            root = os.path.expanduser(str(root))
            if backend == 'lmdb' and not os.path.isdir(root):
                problems.add(f'{key}.{root_key}', dataset[root_key], 'expected an existing folder (an LMDB folder)')
            elif backend == 'lmdb' and not os.path.isfile(os.path.join(root, 'meta_info.txt')):
                problems.add(f'{key}.{root_key}', dataset[root_key], 'expected an LMDB folder with meta_info.txt '
                             '(made by scripts/prepare_*.py or BasicSR\'s create_lmdb)')
            elif not os.path.exists(root):
                problems.add(f'{key}.{root_key}', dataset[root_key], 'expected an existing folder')
        _check_bad_sample_policy(dataset, key, kind, problems)
        if kind == 'train' and dataset_type in DATASET_KEYS:
            _check_train_dataset(opt, dataset, key, unknown, problems)


def _check_bad_sample_policy(dataset, key, kind, problems):
    policy = dataset.get('on_bad_sample')
    if policy is None:
        return
    if policy not in BAD_SAMPLE_CHOICES:
        problems.add(f'{key}.on_bad_sample', policy, f'expected one of {list(BAD_SAMPLE_CHOICES)}')
    elif policy == 'skip' and kind != 'train':
        problems.add(f'{key}.on_bad_sample', policy, "expected 'raise': a validation/test set cannot skip "
                     'images (its metrics would silently cover fewer of them)')


def _check_train_dataset(opt, dataset, key, unknown, problems):
    """The keys a paired training set reads; a missing one that an unknown key resembles was named there."""
    scale = opt.get('scale')
    misspelt = {close for name in unknown for close in difflib.get_close_matches(str(name), PAIRED_TRAIN_REQUIRED,
                                                                                 n=1, cutoff=0.6)}
    for name in PAIRED_TRAIN_REQUIRED:
        if name not in dataset and name not in misspelt:
            problems.missing(f'{key}.{name}', 'a training set reads it')
    gt_size = dataset.get('gt_size')
    if gt_size is not None and not _is_count(gt_size):
        problems.add(f'{key}.gt_size', gt_size, 'expected a positive integer (HR patch size)')
    elif gt_size is not None and _is_int(scale) and scale > 0 and gt_size % scale:
        problems.add(f'{key}.gt_size', gt_size, f'expected a multiple of scale {scale} (the LR patch is '
                     'gt_size / scale)')
    for name, minimum in (('batch_size_per_gpu', 1), ('num_worker_per_gpu', 0)):
        if name in dataset and not _is_count(dataset[name], minimum):
            problems.add(f'{key}.{name}', dataset[name], f'expected an integer >= {minimum}')
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
                problems.add(f'train.{key}.type', optim_type, 'expected a torch.optim class name such as Adam' +
                             did_you_mean(optim_type, [n for n in dir(torch.optim) if n[:1].isupper()]))
    elif optim_g['type'] != 'Adam':
        problems.add('train.optim_g.type', optim_g['type'], f"expected 'Adam' (the only optimizer BasicSR's "
                     f"{opt.get('model_type')} builds)")
    scheduler = train.get('scheduler')
    if isinstance(scheduler, dict) and scheduler.get('type') not in SCHEDULERS:
        problems.add('train.scheduler.type', scheduler.get('type'), f'expected one of {list(SCHEDULERS)}')
    if _needs_pixel_or_perceptual_loss(opt) and not train.get('pixel_opt') and not train.get('perceptual_opt'):
        problems.missing('train.pixel_opt', 'a pixel loss (e.g. L1Loss) or train.perceptual_opt: '
                         f'{opt.get("model_type")} trains with at least one of them')
    plugin_losses = ('ATLoss', 'BitLoss')
    for name, section in train.items():
        if str(name).endswith('_opt') and isinstance(section, dict) and section.get('type') in plugin_losses:
            known = known_keys(opt, ('train', name))
            if section['type'] == 'BitLoss' and known is not None:  # retired keys get their own message
                from cadyq_plugin.losses.bit_loss import RETIRED_KEYS
                known = known | set(RETIRED_KEYS)
            _check_unknown_keys(opt, ('train', name), problems, known)
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
        if lookup(registry.METRIC_REGISTRY, metric_type) is None:
            problems.add(key, metric_type, 'expected a registered metric' + (
                did_you_mean(metric_type, registry.METRIC_REGISTRY._obj_map) or
                ' (calculate_psnr, calculate_ssim, calculate_avg_bit, calculate_bitops, ...)'))
        elif metric_type in QUANT_METRICS and not cadyq_model:
            problems.add(key, metric_type, f'cannot be produced by model_type {model_type!r}: it needs the bit record '
                         f'of model_type {CADYQ_MODELS[0]!r} or {CADYQ_MODELS[1]!r}')
        elif (metric_type == 'calculate_avg_bit' and student is not None and student.get('quant_mode') == 'fp'):
            problems.add(key, metric_type, 'cannot be produced by network_g.quant_mode fp (no quantized '
                         'activations); remove it or use pams/cadyq')
    patchwise = val.get('patchwise')
    if patchwise is not None:
        _check_patchwise(opt, patchwise, cadyq_model, problems)


def _check_patchwise(opt, patchwise, cadyq_model, problems):
    """``val.patchwise: {patch, step, batch}``: positive integers with ``step <= patch`` (else the centre
    crops leave gaps) and ``(patch - step) * scale`` even (the HR margin ``s = (patch - step) / 2 * scale`` each
    patch gives up on each side must be whole pixels, or the crops are not centred)."""
    if not isinstance(patchwise, dict):
        problems.add('val.patchwise', patchwise, 'expected {patch: 96, step: 90, batch: N}')
        return
    if not cadyq_model:
        problems.add('val.patchwise', dict(patchwise), f'is ignored by model_type {opt.get("model_type")!r}: use '
                     f'{CADYQ_MODELS[0]!r} or {CADYQ_MODELS[1]!r}')
    _check_unknown_keys(opt, ('val', 'patchwise'), problems)
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


def _check_bit_budget(opt, phase, student, problems):
    """A bit budget the selectors can meet: ``train.bit_opt.target_fab`` / ``target_bitops`` (``val.target_*`` in a
    test options file, what the tested network was trained to), one target, strictly inside what every selector at
    its lowest / highest candidate gives, on a cadyq network. The BitOPs range is counted on the network built on
    the ``meta`` device (shapes only, no weights)."""
    from cadyq_plugin.losses.bit_loss import RETIRED_KEYS, budget_problems
    from cadyq_plugin.metrics.budget import BUDGET_HR_SIZE, BitBudget
    val = opt.get('val') if isinstance(opt.get('val'), dict) else {}
    val_targets = {k: val[k] for k in ('target_fab', 'target_bitops') if val.get(k) is not None}
    if phase == 'train':
        for key, value in val_targets.items():
            problems.add(f'val.{key}', value, f'is for test options files: train to it with train.bit_opt.{key} '
                         '(validation then reports it)')
        bit_opt = (opt.get('train') or {}).get('bit_opt') if isinstance(opt.get('train'), dict) else None
        where, section = 'train.bit_opt', bit_opt if isinstance(bit_opt, dict) else {}
    else:
        where, section = 'val', val_targets
    targets = {k: section[k] for k in ('target_fab', 'target_bitops') if section.get(k) is not None}
    retired = {k: section[k] for k in RETIRED_KEYS if k in section} if phase == 'train' else {}
    if not targets and not retired:
        return
    found = budget_problems(**targets, **{k: section[k] for k in ('gain', 'floor', 'smoothing') if k in section},
                            **retired)
    for key, value, expected in found:
        problems.add(f'{where}.{key}', value, expected)
    if found:
        return
    (key, target), = targets.items()
    if phase == 'test' and not _is_distilling_model(opt):
        problems.add(f'val.{key}', target, f'is reported by model_type {CADYQ_MODELS[1]!r}, not '
                     f'{opt.get("model_type")!r}')
        return
    network = opt.get('network_g')
    if student is None:  # not a CADyQ arch (an unknown type is reported already)
        if isinstance(network, dict) and lookup(_registries().ARCH_REGISTRY, network.get('type')) is not None:
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
    arch = lookup(_registries().ARCH_REGISTRY, network['type'])  # not build_network: it would start the logger
    kwargs = {name: value for name, value in network.items() if name != 'type'}
    try:
        with torch.device('meta'):
            return arch(**kwargs)
    except Exception:  # noqa: BLE001 (any constructor failure on meta: retry where values exist)
        return arch(**kwargs).to('meta')


# --------------------------------------------------------------------------------------------- entry point
def check_options(opt, yml_path, phase='train', resuming=False, check_files=True):
    """Raise :class:`ConfigError` listing every problem of ``opt`` (parsed from ``yml_path``); return None.

    Args:
        opt (dict): options as parsed from the yml (BasicSR's ordered dicts), ``--force_yml`` applied.
        yml_path (str): the file, for the message.
        phase (str): ``train`` or ``test``.
        resuming (bool): a training state will be resumed (``pretrain_network_g`` is then replaced).
        check_files (bool): check that checkpoints and dataset folders exist.

    ``opt`` is not modified.
    """
    if phase not in ('train', 'test'):
        raise ValueError(f"phase must be 'train' or 'test', got {phase!r}")
    problems = _Problems()
    if not isinstance(opt, dict):
        raise ConfigError(yml_path, [f'the file holds {_show(opt)}, expected a mapping of options'])
    _check_general(opt, phase, problems)
    student, teacher = _check_networks(opt, phase, problems)
    _check_devices(opt, student, teacher, problems)
    _check_scale(opt, student, problems)
    _check_teacher(opt, phase, student, problems)
    _check_paths(opt, phase, resuming, check_files, problems)
    _check_datasets(opt, phase, check_files, problems)
    if phase == 'train':
        _check_train(opt, problems)
    _check_val(opt, phase, student, problems)
    _check_bit_budget(opt, phase, student, problems)
    if problems:
        raise ConfigError(yml_path, problems)
