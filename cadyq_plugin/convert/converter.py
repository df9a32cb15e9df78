"""``basicsr convert``: original-implementation checkpoints -> the plugin's BasicSR checkpoints."""
import functools
import os
import re

import torch

from cadyq_plugin.checkpoint import CheckpointError, atomic_save, extract_state_dict, load_checkpoint
from cadyq_plugin.convert.rules import DROP, LAYOUTS, MEAN_SHIFT, ZeroBias
from cadyq_plugin.quant.modes import QUANT_MODES

# ``basicsr convert`` runs code from SRC only when told to; its advice for a refused pickle says how.
TRUSTED_HINT = 'If you trust its source (an original-implementation checkpoint, say), pass --trusted.'
BASICSR_EDSR_NAMES = ('EDSR_CADyQ', 'fp')  # the plugin's EDSR fp names are BasicSR's EDSR names


def _key_pattern(state_dict):
    """The key names with every index blanked: one pattern for any number of blocks, candidates or scale."""
    return frozenset(re.sub(r'\.\d+(?=\.)', '.#', key) for key in state_dict)


@functools.lru_cache(maxsize=None)
def _plugin_patterns():
    from basicsr.utils.registry import ARCH_REGISTRY
    return {(arch, mode): _key_pattern(ARCH_REGISTRY.get(arch)(quant_mode=mode).state_dict())
            for arch in LAYOUTS for mode in QUANT_MODES}


def identify_plugin_checkpoint(state_dict):
    """``(arch, quant_mode)`` when ``state_dict`` already has the plugin's names of one of its archs, else None."""
    pattern = _key_pattern(state_dict)
    return next((found for found, known in _plugin_patterns().items() if known == pattern), None)


def _refuse_plugin_checkpoint(state_dict, arch_name, quant_mode, path):
    """A plugin checkpoint needs no conversion: say what it is instead of reporting a layout mismatch."""
    found = identify_plugin_checkpoint(state_dict)
    use = 'use it as path.pretrain_network_g'
    if found == BASICSR_EDSR_NAMES and (arch_name, quant_mode) != found:
        raise CheckpointError(f"{path!r} has the names of BasicSR's EDSR, which are also those of an EDSR_CADyQ fp "
                              f'checkpoint: as a plugin checkpoint it needs no conversion ({use}); as a BasicSR EDSR '
                              'checkpoint it is a full-precision model: convert it with --arch EDSR_CADyQ --quant-mode '
                              'fp')
    if found is not None and found != BASICSR_EDSR_NAMES:
        raise CheckpointError(f'{path!r} is already a plugin checkpoint ({found[0]}, {found[1]} mode): nothing to '
                              f'convert; {use}')


def detect_layout(arch_name, state_dict, path):
    """Which known layout ``state_dict`` is in, judged by a key only that layout has."""
    if arch_name not in LAYOUTS:
        raise CheckpointError(f'no converter for arch {arch_name!r}; known: {sorted(LAYOUTS)}')
    for layout, (_, marker) in LAYOUTS[arch_name].items():
        if marker in state_dict:
            return layout
    raise CheckpointError(f'{path!r} is not a known {arch_name} layout: none of the marker keys '
                          f'{[m for _, m in LAYOUTS[arch_name].values()]} is present')


def map_state_dict(state_dict, rules, net):
    """Rename ``state_dict`` by ``rules`` for ``net``; returns (mapped dict, list of problems)."""
    problems, mapped = [], {}
    for key, value in state_dict.items():
        for pattern, target in rules:
            match = re.fullmatch(pattern, key)
            if match is None:
                continue
            if target == MEAN_SHIFT:
                problems += _check_mean_shift(key, value, net)
            elif isinstance(target, ZeroBias):
                name = match.expand(target)
                mapped[name] = value
                mapped[name[:-len('weight')] + 'bias'] = value.new_zeros(value.shape[0])
            elif target != DROP:
                mapped[match.expand(target)] = value
            break
        else:
            problems.append(f'unexpected key {key} {tuple(value.shape)}')
    return mapped, problems


def _check_mean_shift(key, value, net):
    """The original's frozen 1x1 mean-shift convs must hold the identity and the mean the arch subtracts
    (``net.mean``, on the arch's working scale: x255 for EDSR, x1 for CARN, which works on [0, 1])."""
    mean = getattr(net, 'mean', None)
    if mean is None:
        return [f'unexpected key {key}: the target arch has no mean shift']
    if key.endswith('weight'):
        ok = value.shape == (3, 3, 1, 1) and torch.equal(value.flatten(1), torch.eye(3))
        expected = 'the 3x3 identity'
    else:
        sign = -1.0 if key.split('.')[0] == 'sub_mean' else 1.0
        ok = value.shape == (3,) and torch.allclose(value, sign * mean.flatten().cpu(), atol=1e-3)
        expected = f'{(sign * mean.flatten()).tolist()}'
    return [] if ok else [f'{key} is not the mean shift the arch uses (expected {expected}, got {value.flatten()})']


def compare_with_net(mapped, net):
    """List missing keys, unexpected keys and shape mismatches of ``mapped`` against ``net``."""
    target = net.state_dict()
    problems = [f'missing key {k} {tuple(v.shape)}' for k, v in target.items() if k not in mapped]
    problems += [f'unexpected key {k} (after renaming)' for k in mapped if k not in target]
    problems += [
        f'shape of {k}: checkpoint {tuple(mapped[k].shape)}, arch {tuple(v.shape)}' for k, v in target.items()
        if k in mapped and mapped[k].shape != v.shape
    ]
    return problems


def _check_shared(mapped, net):
    """A module the arch shares (SRResNet's single PReLU) appears under several keys: they must agree, or a
    load would silently keep whichever came last."""
    groups = {}
    for name, tensor in list(net.named_parameters(remove_duplicate=False)) + list(
            net.named_buffers(remove_duplicate=False)):
        groups.setdefault(id(tensor), []).append(name)
    problems = []
    for names in groups.values():
        present = [n for n in names if n in mapped]
        if any(mapped[n].shape != mapped[present[0]].shape or not torch.equal(mapped[n], mapped[present[0]])
               for n in present[1:]):
            problems.append(f'{present} are one shared tensor in the arch but differ in the checkpoint')
    return problems


def convert_state_dict(state_dict, net, arch_name, quant_mode, scale, path='<state dict>'):
    """Convert an original (or BasicSR) state dict for ``net``; raise :class:`CheckpointError` listing every
    difference when it does not fit exactly."""
    _refuse_plugin_checkpoint(state_dict, arch_name, quant_mode, path)
    layout = detect_layout(arch_name, state_dict, path)
    builder = LAYOUTS[arch_name][layout][0]
    rules = builder(quant_mode, _num_blocks(net), scale)
    mapped, problems = map_state_dict(state_dict, rules, net)
    problems += compare_with_net(mapped, net)
    problems += _check_shared(mapped, net)
    if problems:
        listing = '\n  '.join(problems)
        raise CheckpointError(f'{path!r} ({layout} layout) does not fit {arch_name} quant_mode={quant_mode} '
                              f'x{scale}:\n  {listing}')
    return {k: mapped[k].clone() for k in net.state_dict()}, layout


def _num_blocks(net):
    body = getattr(net, 'body', None)
    return len(body) if body is not None else 0


def convert_checkpoint(src, dst, arch_name, quant_mode, scale=4, arch_kwargs=None, trusted=False, overwrite=False):
    """Convert file ``src`` into a BasicSR checkpoint ``dst`` (weights under ``params``) and return its path.

    ``dst`` is refused if it exists unless ``overwrite``; it is written atomically, and only after the
    converted weights loaded strictly into the target arch.
    """
    from basicsr.utils.registry import ARCH_REGISTRY
    if arch_name not in LAYOUTS:
        raise CheckpointError(f'no converter for arch {arch_name!r}; known: {sorted(LAYOUTS)}')
    if os.path.exists(dst) and not overwrite:
        raise CheckpointError(f'{dst!r} exists; choose another destination or pass --overwrite')
    state_dict = extract_state_dict(load_checkpoint(src, trusted=trusted, pickle_hint=TRUSTED_HINT), src)
    net = ARCH_REGISTRY.get(arch_name)(upscale=scale, quant_mode=quant_mode, **(arch_kwargs or {}))
    converted, layout = convert_state_dict(state_dict, net, arch_name, quant_mode, scale, src)
    net.load_state_dict(converted, strict=True)
    atomic_save({'params': converted}, dst)
    return layout
