"""What a preparation output was made from, so a changed source is noticed instead of silently reused.

Each output ``<out>`` gets ``<out>.manifest.json`` beside it (never inside: BasicSR lists every file of an image
folder): the names and sizes of the source files and the options that shaped the output (scale, crop sizes ...).
An output whose manifest differs from what the current sources and options would give is out of date.
"""
import json
import os
from pathlib import Path
from typing import Dict, Iterable, Optional

from cadyq_plugin.data.image_io import TMP_SUFFIX, PathLike

MANIFEST_SUFFIX = '.manifest.json'
_SHOWN = 3  # file names listed per kind of difference


def manifest_path(output: PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.name + MANIFEST_SUFFIX)


def make_manifest(sources: Dict[str, Iterable[Path]], **options) -> Dict:
    """``sources`` maps a role (``'input'``, ``'hr'`` ...) to the files read; ``options`` must be JSON values.

    The result is what reading it back from JSON gives (tuples become lists), so manifests compare equal.
    """
    manifest = {
        'sources': {role: {Path(p).name: os.path.getsize(p) for p in paths} for role, paths in sources.items()},
        'options': options,
    }
    return json.loads(json.dumps(manifest))


def read_manifest(output: PathLike) -> Optional[Dict]:
    """The manifest of ``output``, or None when it has none (made by a version without manifests)."""
    path = manifest_path(output)
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


def write_manifest(output: PathLike, manifest: Dict) -> None:
    """Write the manifest of ``output`` atomically."""
    path = manifest_path(output)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _names(names):
    shown = ', '.join(sorted(names)[:_SHOWN])
    return shown + (f' and {len(names) - _SHOWN} more' if len(names) > _SHOWN else '')


def describe_difference(old: Dict, new: Dict) -> str:
    """What changed between two manifests, in words (empty when they are the same)."""
    parts = []
    old_sources, new_sources = old.get('sources', {}), new.get('sources', {})
    for role in sorted(set(old_sources) | set(new_sources)):
        before, now = old_sources.get(role, {}), new_sources.get(role, {})
        added = [n for n in now if n not in before]
        removed = [n for n in before if n not in now]
        resized = [n for n in now if n in before and now[n] != before[n]]
        where = '' if role == 'input' else f' ({role})'
        if added:
            parts.append(f'{len(added)} source file{"s" * (len(added) > 1)} added{where}: {_names(added)}')
        if removed:
            parts.append(f'{len(removed)} source file{"s" * (len(removed) > 1)} gone{where}: {_names(removed)}')
        if resized:
            parts.append(f'{len(resized)} source file{"s" * (len(resized) > 1)} of another size{where}: '
                         + _names([f'{n} ({before[n]} -> {now[n]} bytes)' for n in resized]))
    old_options, new_options = old.get('options', {}), new.get('options', {})
    for key in sorted(set(old_options) | set(new_options)):
        if old_options.get(key) != new_options.get(key):
            parts.append(f'{key} {old_options.get(key)!r} -> {new_options.get(key)!r}')
    return '; '.join(parts)
