"""The ``val`` section: the test settings, metrics the model and mode can produce, and patch-wise tiling."""
from cadyq_plugin.config_check.keys import check_unknown_keys
from cadyq_plugin.config_check.model_type import CADYQ_MODELS, is_cadyq_model
from cadyq_plugin.metrics.bitops import BIT_RECORD_METRICS
from cadyq_plugin.problems import did_you_mean, is_int
from cadyq_plugin.registries import lookup, registered_names


def check_val(opt, phase, student, problems):
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
    cadyq_model = is_cadyq_model(opt)
    metrics = val.get('metrics') or {}
    if not isinstance(metrics, dict):
        problems.add('val.metrics', metrics, 'expected a section of named metrics')
        metrics = {}
    for name, metric in metrics.items():
        metric_type = metric.get('type') if isinstance(metric, dict) else None
        _check_metric(opt, f'val.metrics.{name}.type', metric_type, cadyq_model, student, problems)
    patchwise = val.get('patchwise')
    if patchwise is not None:
        _check_patchwise(opt, patchwise, cadyq_model, problems)


def _check_metric(opt, key, metric_type, cadyq_model, student, problems):
    if lookup('METRIC', metric_type) is None:
        problems.add(key, metric_type, 'expected a registered metric' + (
            did_you_mean(metric_type, registered_names('METRIC')) or
            ' (calculate_psnr, calculate_ssim, calculate_avg_bit, calculate_bitops, ...)'))
    elif metric_type in BIT_RECORD_METRICS and not cadyq_model:
        problems.add(key, metric_type, f'cannot be produced by model_type {opt.get("model_type")!r}: it needs the bit '
                     f'record of model_type {CADYQ_MODELS[0]!r} or {CADYQ_MODELS[1]!r}')
    elif (metric_type == 'calculate_avg_bit' and student is not None and student.get('quant_mode') == 'fp'):
        problems.add(key, metric_type, 'cannot be produced by network_g.quant_mode fp (no quantized '
                     'activations); remove it or use pams/cadyq')


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
    check_unknown_keys(opt, ('val', 'patchwise'), problems)
    values = {}
    for name in ('patch', 'step', 'batch'):
        value = patchwise.get(name, 1 if name == 'batch' else None)
        if not is_int(value) or value < 1:
            problems.add(f'val.patchwise.{name}', value, 'expected a positive integer' +
                         (' (LR pixels)' if name != 'batch' else ' (patches per forward)'))
        else:
            values[name] = value
    patch, step = values.get('patch'), values.get('step')
    if patch is None or step is None:
        return
    scale = opt.get('scale') if is_int(opt.get('scale')) else 1
    if step > patch:
        problems.add('val.patchwise.step', step, f'expected <= patch ({patch}): the kept centres would leave gaps')
    elif (patch - step) * scale % 2:
        problems.add('val.patchwise.step', step, f'expected (patch - step) * scale even: each patch drops '
                     f'(patch - step) / 2 * scale = {(patch - step) * scale / 2:g} HR pixels per side, which must be '
                     'whole pixels (e.g. step = patch - 6)')
