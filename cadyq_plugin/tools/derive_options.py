"""Derive a runnable options file from one of the repository's reference options files.

The quickstart and the tests run the real reference options with a few keys changed (data paths, iterations,
batch size), so what they exercise is what users run.
"""
import os
from collections import OrderedDict

import yaml


def load_options(path):
    """The options of ``path``, read by the pipelines' own parser."""
    import cadyq_plugin  # noqa: F401
    from cadyq_plugin.options import read_yml
    return read_yml(path)


def set_key(opt, dotted_key, value):
    """Set ``a.b.c`` in nested dicts; ``None`` as value deletes the key (for whole sections too)."""
    *parents, leaf = dotted_key.split('.')
    node = opt
    for key in parents:
        if not isinstance(node.get(key), dict):
            raise KeyError(f'{dotted_key!r}: {key!r} is not a section of the options')
        node = node[key]
    if value is None:
        node.pop(leaf, None)
    else:
        node[leaf] = value


def derive_options(base_path, overrides, out_path):
    """Write ``base_path`` with ``overrides`` ({dotted key: value}) applied to ``out_path``; return the dict."""
    from basicsr.utils.options import ordered_yaml
    opt = load_options(base_path)
    for key, value in overrides.items():
        set_key(opt, key, value)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, 'w') as f:
        yaml.dump(_plain(opt), f, Dumper=ordered_yaml()[1], default_flow_style=False, sort_keys=False)
    return opt


def _plain(node):
    if isinstance(node, dict):
        return OrderedDict((k, _plain(v)) for k, v in node.items())
    if isinstance(node, tuple):
        return [_plain(v) for v in node]
    return node
