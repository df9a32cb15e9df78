"""BasicSR's registries, read as ``Registry.get`` reads them but without its print; the one place that touches
their private name map."""
import importlib

KINDS = ('ARCH', 'DATASET', 'LOSS', 'METRIC', 'MODEL')


def registry(kind):
    """BasicSR's ``<kind>_REGISTRY``, filled: each basicsr subpackage registers its classes when imported (the
    plugin's classes are registered by importing :mod:`cadyq_plugin`, which every module of the plugin does first)."""
    if kind not in KINDS:
        raise ValueError(f'kind must be one of {KINDS}, got {kind!r}')
    for subpackage in ('archs', 'data', 'losses', 'metrics', 'models'):
        importlib.import_module(f'basicsr.{subpackage}')
    from basicsr.utils import registry as registries
    return getattr(registries, f'{kind}_REGISTRY')


def registered_names(kind):
    """Every name in the registry, for "did you mean" hints."""
    return list(registry(kind)._obj_map)


def lookup(kind, name):
    """The registered object for ``name`` as BasicSR finds it (``name``, else ``name_basicsr``), or None."""
    if not isinstance(name, str):
        return None
    objects = registry(kind)._obj_map
    return objects.get(name, objects.get(f'{name}_basicsr'))
