"""Safe output folders for dataset preparation: never overwrite silently, survive interruptions.

Every step builds its output in ``<output>.partial`` and renames it to ``<output>`` only when it has finished,
so ``<output>`` existing means complete and ``<output>.partial`` existing means an earlier run was interrupted.

- An existing complete output is refused (:class:`FileExistsError`) unless ``overwrite=True``, which first
  moves it aside to ``<output>.bak-<YYYYmmdd-HHMMSS>`` (never deleted).
- A half-written output is refused (:class:`PartialOutputError`) unless ``partial`` says what to do:
  ``'resume'`` keeps the files already written (each file is written atomically, so they are complete) and
  the step only produces the missing ones; ``'redo'`` deletes the half-written output, which only this code
  ever writes, and starts over. An LMDB cannot be appended to by BasicSR's writer, so for LMDBs ``'resume'``
  rebuilds it like ``'redo'`` (it is one sequential pass over finished sub-images).
"""
import contextlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Iterator, Optional

from cadyq_plugin.data.image_io import TMP_SUFFIX, PathLike

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = '.partial'
PARTIAL_CHOICES = (None, 'resume', 'redo')


class PartialOutputError(RuntimeError):
    """A previous run stopped half-way; the message says how to resume or redo it."""


def partial_path(output: PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.name + PARTIAL_SUFFIX)


def move_aside(path: PathLike) -> Path:
    """Rename ``path`` to a free ``<path>.bak-<timestamp>[-n]`` name and return it."""
    path = Path(path)
    stamp = time.strftime('%Y%m%d-%H%M%S')
    backup = path.with_name(f'{path.name}.bak-{stamp}')
    n = 1
    while backup.exists():
        backup = path.with_name(f'{path.name}.bak-{stamp}-{n}')
        n += 1
    os.replace(path, backup)
    logger.warning('moved the existing %s aside to %s', path, backup)
    return backup


def check_partial_choice(partial: Optional[str]) -> None:
    if partial not in PARTIAL_CHOICES:
        raise ValueError(f"partial must be one of None, 'resume', 'redo'; got {partial!r}")


@contextlib.contextmanager
def staged_output(output: PathLike, overwrite: bool = False, partial: Optional[str] = None) -> Iterator[Path]:
    """Yield the staging folder ``<output>.partial``; rename it to ``output`` when the block succeeds.

    On an exception the staging folder is left in place, to be resumed or redone by a later run.
    """
    check_partial_choice(partial)
    output = Path(output)
    staging = partial_path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f'{output} already exists and is left untouched; pass overwrite=True '
                              f'(--overwrite) to move it aside and build it again')
    if staging.exists() and partial is None:
        raise PartialOutputError(f'{staging} is a half-written output from an interrupted run; pass '
                                 f"partial='resume' (--resume) to continue it or partial='redo' (--redo) "
                                 f'to delete it and start over')
    if output.exists():
        move_aside(output)
    if staging.exists() and partial == 'redo':
        logger.warning('deleting the half-written %s to redo it', staging)
        shutil.rmtree(staging)
    elif staging.exists():
        logger.info('resuming the half-written %s', staging)
        for tmp in staging.glob('*' + TMP_SUFFIX):
            tmp.unlink()
    staging.mkdir(parents=True, exist_ok=True)
    yield staging
    os.replace(staging, output)


def reuse_or_build(output: PathLike, build, overwrite: bool = False) -> Path:
    """Pipelines call this per step: a complete ``output`` is reused (logged), else ``build()`` makes it.

    With ``overwrite`` the step is rebuilt and ``build`` moves the old output aside.
    """
    output = Path(output)
    if output.exists() and not overwrite:
        logger.info('reusing the existing %s', output)
        return output
    return Path(build())
