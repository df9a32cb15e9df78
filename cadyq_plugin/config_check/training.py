"""The ``train`` section (iterations, optimizers, scheduler, losses), the frequencies of logging, checkpoints and
validation, and ``train.compile`` / ``val.compile``."""
from cadyq_plugin.config_check.basicsr_keys import SCHEDULERS
from cadyq_plugin.config_check.keys import check_unknown_keys, known_keys
from cadyq_plugin.config_check.model_type import CADYQ_MODELS, is_cadyq_model, needs_pixel_or_perceptual_loss
from cadyq_plugin.losses import ATLoss, BitLoss
from cadyq_plugin.budget.controller import RETIRED_KEYS
from cadyq_plugin.models.compiling import check_compile_value
from cadyq_plugin.models.step_guard import DEFAULT_MAX_BAD_STEPS
from cadyq_plugin.problems import did_you_mean, is_count

PLUGIN_LOSSES = (ATLoss.__name__, BitLoss.__name__)  # their sections are checked for unknown keys


def check_train(opt, problems):
    train = opt.get('train')
    if not isinstance(train, dict):
        problems.missing('train', 'the training section (losses, optimizers, total_iter)')
        return
    if not is_count(train.get('total_iter')):
        problems.add('train.total_iter', train.get('total_iter'), 'expected a positive integer')
    if 'max_bad_steps' in train and not is_count(train['max_bad_steps']):
        problems.add('train.max_bad_steps', train['max_bad_steps'], 'expected a positive integer (consecutive '
                     f'non-finite steps before training stops; default {DEFAULT_MAX_BAD_STEPS})')
    _check_optimizers(opt, train, problems)
    scheduler = train.get('scheduler')
    if isinstance(scheduler, dict) and scheduler.get('type') not in SCHEDULERS:
        problems.add('train.scheduler.type', scheduler.get('type'), f'expected one of {list(SCHEDULERS)}')
    if needs_pixel_or_perceptual_loss(opt) and not train.get('pixel_opt') and not train.get('perceptual_opt'):
        problems.missing('train.pixel_opt', 'a pixel loss (e.g. L1Loss) or train.perceptual_opt: '
                         f'{opt.get("model_type")} trains with at least one of them')
    for name, section in train.items():
        if str(name).endswith('_opt') and isinstance(section, dict) and section.get('type') in PLUGIN_LOSSES:
            known = known_keys(opt, ('train', name))
            if section['type'] == BitLoss.__name__ and known is not None:  # retired keys get their own message
                known = known | set(RETIRED_KEYS)
            check_unknown_keys(opt, ('train', name), problems, known)
    logger = opt.get('logger') or {}
    for name in ('print_freq', 'save_checkpoint_freq'):
        if not is_count(logger.get(name)):
            problems.add(f'logger.{name}', logger.get(name), 'expected a positive integer (iterations)')
    val = opt.get('val')
    if isinstance(val, dict) and not is_count(val.get('val_freq')):
        problems.add('val.val_freq', val.get('val_freq'), 'expected a positive integer (iterations)')


def _check_optimizers(opt, train, problems):
    """A CADyQ model builds any ``torch.optim`` class; BasicSR's models build Adam only."""
    optim_g = train.get('optim_g')
    if not isinstance(optim_g, dict) or 'type' not in optim_g:
        problems.missing('train.optim_g.type', 'the optimizer of the network weights, e.g. Adam')
    elif is_cadyq_model(opt):
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


def check_compile(opt, problems):
    """``train.compile`` / ``val.compile``: a valid value, and a model that reads it (the plugin's)."""
    for section in ('train', 'val'):
        options = opt.get(section)
        if not isinstance(options, dict) or options.get('compile') is None:
            continue
        expected = check_compile_value(options['compile'])
        if expected:
            problems.add(f'{section}.compile', options['compile'], expected)
        elif options['compile'] is not False and not is_cadyq_model(opt):
            problems.add(f'{section}.compile', options['compile'], f'expected false (only the plugin\'s models, '
                         f'{" and ".join(CADYQ_MODELS)}, compile their networks; {opt.get("model_type")} does not)')
