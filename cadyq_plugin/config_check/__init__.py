"""Checking an options file before any work starts (no directory made, no data read, no model built).

:func:`check_options` is a pure function of the parsed options and the yml path: it collects every problem it
finds and raises one :class:`ConfigError` whose message names the file, and for each problem the key, the
value found and what is expected. The plugin's pipelines call it (through :func:`cadyq_plugin.options.
parse_options`) before anything else, so a typo costs seconds, not a run that dies hours later.

One module per part of the file: :mod:`.model_type` (name, registered model), :mod:`.launch` (GPUs, seed,
process group, determinism, what the device can run), :mod:`.network` (CADyQ arch arguments, scale, teacher),
:mod:`.paths`, :mod:`.datasets`, :mod:`.training`, :mod:`.validation` (metrics, patch-wise tiling) and
:mod:`.budget`. Each takes its keys and limits from the component that reads them (a module's ``OPTION_KEYS``,
the quantizers' bit ranges, the dataset's bad-sample policies, ...), so a key a component reads is declared once,
beside the code that reads it. Registered names (model, arch, dataset, metric, loss) are looked up the way
BasicSR's registries do (:mod:`cadyq_plugin.registries`). Requirements that belong to one model (``scale``,
``gt_size``, a pixel loss, ...) are checked only for the models that need them, and messages about stock BasicSR
models carry no CADyQ advice: a stock options file passes unless BasicSR itself would fail on it.

:func:`known_keys` says which keys a section may hold beyond those in the file (what the models, datasets,
losses and pipelines read when present); ``--force_yml`` uses it to refuse paths that would silently do nothing.
"""
from cadyq_plugin.archs.network_options import bits_problem
from cadyq_plugin.budget.check import check_bit_budget
from cadyq_plugin.config_check.datasets import check_datasets
from cadyq_plugin.config_check.keys import known_keys
from cadyq_plugin.config_check.launch import check_devices, check_launch
from cadyq_plugin.config_check.model_type import check_name_and_model, is_distilling_model
from cadyq_plugin.config_check.network import check_networks, check_scale, check_teacher
from cadyq_plugin.config_check.paths import check_paths
from cadyq_plugin.config_check.training import check_compile, check_train
from cadyq_plugin.config_check.validation import check_val
from cadyq_plugin.errors import UserError
from cadyq_plugin.problems import Problems, did_you_mean, show

__all__ = ['ConfigError', 'bits_problem', 'check_options', 'did_you_mean', 'known_keys']


class ConfigError(UserError, ValueError):
    """An options file that cannot run; ``problems`` lists one line per problem (``key = value: expected``)."""

    def __init__(self, yml_path, problems):
        self.yml_path = yml_path
        self.problems = list(problems)
        count = len(self.problems)
        super().__init__(f'options file {yml_path!r} has {count} problem{"s" if count > 1 else ""}:\n  ' +
                         '\n  '.join(self.problems))


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
    problems = Problems()
    if not isinstance(opt, dict):
        raise ConfigError(yml_path, [f'the file holds {show(opt)}, expected a mapping of options'])
    check_name_and_model(opt, problems)
    check_launch(opt, problems)
    student, teacher = check_networks(opt, problems)
    check_devices(opt, student, teacher, problems)
    check_scale(opt, student, problems)
    check_teacher(opt, phase, student, problems)
    check_paths(opt, resuming, check_files, problems)
    check_datasets(opt, phase, check_files, problems)
    if phase == 'train':
        check_train(opt, problems)
    check_val(opt, phase, student, problems)
    check_bit_budget(opt, phase, student, problems, is_distilling_model(opt))
    check_compile(opt, problems)
    if problems:
        raise ConfigError(yml_path, problems)
