"""Safe output folders for dataset preparation: never overwrite silently, survive interruptions, notice a
changed source.

Every step builds its output in ``<output>.partial`` and renames it to ``<output>`` only when it has finished,
so ``<output>`` existing means complete and ``<output>.partial`` existing means an earlier run was interrupted.
Beside each output lies its manifest (:mod:`cadyq_plugin.data.manifest`): the source files' names and sizes and
the options that shaped it. :func:`build_output` is the one implementation of these rules:

- An existing complete output is refused (:class:`FileExistsError`) unless ``overwrite=True``, which first
  moves it aside (with its manifest) to ``<output>.bak-<YYYYmmdd-HHMMSS>`` (never deleted). Pipelines pass
  ``reuse=True``: a complete output whose manifest matches is reused; one whose manifest differs is refused
  (:class:`StaleOutputError`, naming the difference); one without a manifest (made by a version without
  manifests) is reused with a warning, since nothing says what it was made from.
- A half-written output is refused (:class:`PartialOutputError`) unless ``partial`` says what to do:
  ``'resume'`` keeps the files already written (each file is written atomically, so they are complete) and
  the step only produces the missing ones, unless the source changed since it was started; ``'redo'`` deletes
  the half-written output, which only this code ever writes, and starts over. With ``reuse``, ``'redo'`` also
  rebuilds outputs that are out of date or have no manifest (moving the old ones aside). A step that cannot
  append (an LMDB) passes ``resumable=False``: ``'resume'`` rebuilds it like ``'redo'``.
- An interrupt (Ctrl-C) while writing raises :class:`PreparationInterrupted`, a ``KeyboardInterrupt`` that
  names the ``.partial`` left behind.
"""
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, Optional

from cadyq_plugin.data.image_io import TMP_SUFFIX, PathLike
from cadyq_plugin.data.manifest import describe_difference, manifest_path, read_manifest, write_manifest
from cadyq_plugin.errors import OutputExistsError, UserError

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = '.partial'
PARTIAL_CHOICES = (None, 'resume', 'redo')


class PartialOutputError(UserError, RuntimeError):
    """A previous run stopped half-way; the message says how to resume or redo it."""


class StaleOutputError(UserError, RuntimeError):
    """An output (or half-written output) was made from other sources or options than the current ones."""


class PreparationInterrupted(KeyboardInterrupt):
    """Ctrl-C while a step was writing ``partial``, which is kept for ``--resume`` / ``--redo``."""

    def __init__(self, partial: Path):
        super().__init__(str(partial))
        self.partial = partial


def partial_path(output: PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.name + PARTIAL_SUFFIX)


def move_aside(path: PathLike) -> Path:
    """Rename ``path`` (and its manifest) to a free ``<path>.bak-<timestamp>[-n]`` name and return it."""
    path = Path(path)
    stamp = time.strftime('%Y%m%d-%H%M%S')
    backup = path.with_name(f'{path.name}.bak-{stamp}')
    n = 1
    while backup.exists():
        backup = path.with_name(f'{path.name}.bak-{stamp}-{n}')
        n += 1
    os.replace(path, backup)
    if manifest_path(path).exists():
        os.replace(manifest_path(path), manifest_path(backup))
    logger.warning('moved the existing %s aside to %s', path, backup)
    return backup


def check_partial_choice(partial: Optional[str]) -> None:
    if partial not in PARTIAL_CHOICES:
        raise ValueError(f"partial must be one of None, 'resume', 'redo'; got {partial!r}")


def _existing_is_current(output: Path, manifest: Dict, overwrite: bool, partial: Optional[str],
                         reuse: bool) -> bool:
    """For an existing complete ``output``: True to reuse it, False to rebuild it; raise to refuse."""
    if overwrite:
        return False
    if not reuse:
        raise OutputExistsError(f'{output} already exists and is left untouched; pass overwrite=True '
                                f'(--overwrite) to move it aside and build it again')
    old = read_manifest(output)
    difference = None if old is None else describe_difference(old, manifest)
    if partial == 'redo' and difference != '':
        logger.info('%s: %s, rebuilding it', output, 'no manifest' if old is None else difference)
        return False
    if old is None:
        logger.warning('%s has no manifest (made by an older version): reused without checking its source; '
                       "partial='redo' (--redo) rebuilds it", output)
        return True
    if difference:
        raise StaleOutputError(f'{output} is out of date: {difference}. It is left untouched; pass '
                               f"partial='redo' (--redo) to rebuild the outputs that are out of date (the old ones "
                               f'are moved aside to *.bak-<time>) or overwrite=True (--overwrite) to rebuild all')
    logger.info('%s is up to date: reused', output)
    return True


def _prepare_staging(staging: Path, manifest: Dict, partial: Optional[str], resumable: bool) -> bool:
    """Check a half-written ``staging`` against ``partial``; return whether it is to be deleted (redone)."""
    if not staging.exists():
        return False
    if partial is None:
        raise PartialOutputError(f'{staging} is a half-written output from an interrupted run; pass '
                                 f"partial='resume' (--resume) to continue it or partial='redo' (--redo) "
                                 f'to delete it and start over')
    if partial == 'redo' or not resumable:
        return True
    old = read_manifest(staging)
    difference = '' if old is None else describe_difference(old, manifest)
    if difference:
        raise StaleOutputError(f'{staging} cannot be resumed, it was started from other sources or options: '
                               f"{difference}. Pass partial='redo' (--redo) to delete it and start over")
    return False


def build_output(output: PathLike, manifest: Dict, write: Callable[[Path], None], overwrite: bool = False,
                 partial: Optional[str] = None, reuse: bool = False, resumable: bool = True) -> Path:
    """Make ``output`` by ``write(staging_folder)`` under the rules of this module, or reuse it; return its path.

    Every refusal happens before anything is moved or deleted. On an exception the staging folder is left in
    place, to be resumed or redone by a later run.
    """
    check_partial_choice(partial)
    output = Path(output)
    staging = partial_path(output)
    if output.exists() and _existing_is_current(output, manifest, overwrite, partial, reuse):
        return output
    redo = _prepare_staging(staging, manifest, partial, resumable)
    if output.exists():
        move_aside(output)
    if redo:
        logger.warning('deleting the half-written %s to %s', staging,
                       'redo it' if partial == 'redo' else 'rebuild it (this step cannot resume)')
        shutil.rmtree(staging)
    elif staging.exists():
        logger.info('resuming the half-written %s', staging)
        for tmp in staging.glob('*' + TMP_SUFFIX):
            tmp.unlink()
    staging.mkdir(parents=True, exist_ok=True)
    write_manifest(staging, manifest)
    try:
        write(staging)
    except KeyboardInterrupt as err:
        raise PreparationInterrupted(staging) from err
    os.replace(manifest_path(staging), manifest_path(output))
    os.replace(staging, output)
    return output
