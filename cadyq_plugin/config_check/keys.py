"""Which keys a section of the options may hold: what the components that read the section declare (each
module's ``OPTION_KEYS``, by section; BasicSR's in :mod:`.basicsr_keys`), or for a section with a registered
``type`` the arguments of what is built from it. Sections nobody declares accept any key, like BasicSR."""
import inspect

from cadyq_plugin import determinism, distributed, inference
from cadyq_plugin.config_check import basicsr_keys
from cadyq_plugin.data import paired_dataset
from cadyq_plugin.models import cadyq_model, compiling, sr_model
from cadyq_plugin.problems import did_you_mean
from cadyq_plugin.registries import lookup

READERS = (basicsr_keys, sr_model, cadyq_model, compiling, inference, determinism, distributed)
DATASET_KEYS = {'CADyQPairedImageDataset': set(basicsr_keys.PAIRED_DATASET_KEYS) | set(paired_dataset.OPTION_KEYS),
                'PairedImageDataset': set(basicsr_keys.PAIRED_DATASET_KEYS)}


def declared_keys(section):
    """The keys the readers declare for ``section`` (dotted; ``''`` is the top level), or None if none does."""
    declared = [reader.OPTION_KEYS[section] for reader in READERS if section in reader.OPTION_KEYS]
    return set().union(*declared) if declared else None


def signature_keys(obj):
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
    section = _section(opt, path)
    section = section if isinstance(section, dict) else {}
    if not path:
        return declared_keys('') | {k for k in opt if str(k).startswith('network_')}
    head = path[0]
    if len(path) == 1 and head == 'path':
        return _path_keys(section)
    if len(path) == 1 and str(head).startswith('network_'):
        cls = lookup('ARCH', section.get('type'))
        return signature_keys(cls) if cls is not None else None
    if head == 'datasets' and len(path) == 2:
        return DATASET_KEYS.get(section.get('type'))
    if head == 'train' and len(path) == 2:
        return _train_section_keys(path[1], section)
    return declared_keys('.'.join(str(p) for p in path))


def _section(opt, path):
    node = opt
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _path_keys(section):
    prefixes = basicsr_keys.PATH_PREFIXES
    return set(basicsr_keys.PATH_KEYS) | {k for k in section if str(k).startswith(prefixes)} | {
        prefix + net for prefix in prefixes for net in ('g', 't', 'd')}


def _train_section_keys(name, section):
    import torch
    if name == 'scheduler':
        from basicsr.models import lr_scheduler
        kind = section.get('type')
        cls = lr_scheduler.MultiStepRestartLR if kind in ('MultiStepLR', 'MultiStepRestartLR') else getattr(
            lr_scheduler, str(kind), None)
        keys = signature_keys(cls) if isinstance(cls, type) else None
        return keys - {'optimizer', 'last_epoch'} if keys else None
    if str(name).startswith('optim_'):
        cls = getattr(torch.optim, str(section.get('type')), None)
        keys = signature_keys(cls) if isinstance(cls, type) else None
        return keys - {'params'} if keys else None
    if str(name).endswith('_opt'):
        cls = lookup('LOSS', section.get('type'))
        return signature_keys(cls) if cls is not None else None
    return None


def check_unknown_keys(opt, path, problems, known=None):
    """One problem per key of the section at ``path`` that nothing reads; returns the unknown keys."""
    node = _section(opt, path)
    known = known if known is not None else known_keys(opt, path)
    if not isinstance(node, dict) or known is None:
        return []
    where = '.'.join(str(p) for p in path)
    unknown = [key for key in node if key not in known]
    for key in unknown:
        problems.add(f'{where}.{key}', node[key], 'not a known key of this section' + did_you_mean(key, known))
    return unknown
