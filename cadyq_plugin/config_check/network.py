"""The ``network_*`` sections (resolved by :mod:`cadyq_plugin.archs.network_options`), the scale the datasets
share with the network, and what a distilling stage needs: a teacher, its weights and bit selectors."""
from cadyq_plugin.archs.network_options import compare_teacher, resolve_network
from cadyq_plugin.config_check.keys import DATASET_KEYS
from cadyq_plugin.config_check.model_type import is_cadyq_model, is_distilling_model, model_class
from cadyq_plugin.problems import is_int


def check_networks(opt, problems):
    """Check ``network_g`` and ``network_t``; return them resolved (CADyQ archs) or None."""
    student = teacher = None
    if opt.get('network_g') is None:
        problems.missing('network_g', 'the network to train or test')
    else:
        student = resolve_network(opt['network_g'], 'network_g', problems)
    if opt.get('network_t') is not None:
        teacher = resolve_network(opt['network_t'], 'network_t', problems)
    if student is not None and teacher is not None:
        compare_teacher(student, teacher, problems)
    return student, teacher


def _uses_paired_dataset(opt):
    return any(isinstance(d, dict) and d.get('type') in DATASET_KEYS for d in (opt.get('datasets') or {}).values())


def check_scale(opt, student, problems):
    scale = opt.get('scale')
    if scale is None:
        if is_cadyq_model(opt) or _uses_paired_dataset(opt):
            problems.missing('scale', 'the upscaling factor of the datasets (the pipeline passes it to every dataset)')
        return
    if not is_int(scale) or scale < 1:
        problems.add('scale', scale, 'expected a positive integer')
        return
    if student is not None and student.get('upscale') != scale:
        problems.add('scale', scale, f'expected {student.get("upscale")} = network_g.upscale: the datasets must be '
                     'made for the network\'s scale')
    for phase, dataset in (opt.get('datasets') or {}).items():
        if isinstance(dataset, dict) and dataset.get('scale') not in (None, scale):
            problems.add(f'datasets.{phase}.scale', dataset['scale'], f'expected {scale} like the top-level scale')


def check_teacher(opt, phase, student, problems):
    train = opt.get('train') or {}
    path = opt.get('path') or {}
    model_type = opt.get('model_type')
    distilling = is_distilling_model(opt)
    if phase == 'train' and not distilling and model_class(opt) is not None:
        for key in ('kd_opt', 'bit_opt'):
            if train.get(key) is not None:
                problems.add(f'train.{key}', train[key]['type'] if isinstance(train[key], dict) else train[key],
                             f'is ignored by model_type {model_type!r}: use model_type \'CADyQModel\'')
        if opt.get('network_t') is not None and is_cadyq_model(opt):
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
