"""Pack a folder of images into an LMDB that BasicSR's ``io_backend: {type: lmdb}`` reads.

The writing itself is BasicSR's ``make_lmdb_from_imgs`` (keys = base names, PNG-encoded values,
``meta_info.txt`` with ``<key>.png (h,w,c) <compress_level>`` lines). Around it this module adds what that
function lacks: it never exits the process, never writes over an existing LMDB (see
:mod:`cadyq_plugin.data.outputs`), and sizes the memory map from the images' real dimensions instead of from
the first image only, which under-estimates small or mixed sets.
"""
from pathlib import Path
from typing import Iterable

import cadyq_plugin  # noqa: F401  (compat shim before basicsr)
from basicsr.utils.lmdb_util import make_lmdb_from_imgs
from cadyq_plugin.data.image_io import PathLike, image_size, list_images
from cadyq_plugin.data.manifest import make_manifest
from cadyq_plugin.data.outputs import build_output
from cadyq_plugin.errors import InputError

_META = 'meta_info.txt'


def _encoded_bound(path: Path) -> int:
    """Upper bound of one image PNG-encoded by BasicSR, from its header only.

    OpenCV decodes these formats to at most 4 channels of 16 bits, and deflate grows incompressible data by a
    few bytes per block, plus one filter byte per row.
    """
    height, width = image_size(path)
    raw = height * (width * 8 + 1)
    return raw + raw // 1000 + 4096


def lmdb_map_size(paths: Iterable[Path], extra: int = 64 << 20) -> int:
    """LMDB map size that is sure to hold ``paths`` PNG-encoded at any compression level.

    A guaranteed bound rather than an estimate (BasicSR extrapolates from the first image); on Linux the map is
    reserved address space, not disk, so the headroom costs nothing.
    """
    return sum(_encoded_bound(p) for p in paths) + extra


def make_lmdb(folder: PathLike, lmdb_path: PathLike, compress_level: int = 1, batch: int = 5000, **safety) -> Path:
    """Write every image of ``folder`` into ``lmdb_path`` (must end in ``.lmdb``), keyed by base name.

    Args:
        compress_level: PNG compression of the stored values (BasicSR's default 1: fast to decode).
        batch: Images per LMDB transaction.
        **safety: ``overwrite`` / ``partial`` / ``reuse``, see :mod:`cadyq_plugin.data.outputs`; a half-written
            LMDB is rebuilt for ``'resume'`` too (BasicSR's writer cannot append).

    Returns:
        The LMDB path.
    """
    lmdb_path = Path(lmdb_path)
    if lmdb_path.suffix != '.lmdb':
        raise InputError(f"{lmdb_path}: an LMDB path must end in '.lmdb' (BasicSR's convention)")
    paths = list_images(folder)
    keys = [p.stem for p in paths]
    for path, key in zip(paths, keys):
        if not key.isascii():
            raise InputError(f'{path}: LMDB keys are ASCII base names; rename the file')

    def write(staging):
        inner = staging / lmdb_path.name
        make_lmdb_from_imgs(str(folder), str(inner), [p.name for p in paths], keys, batch=batch,
                            compress_level=compress_level, multiprocessing_read=False,
                            map_size=lmdb_map_size(paths))
        lines = (inner / _META).read_text().splitlines()
        if len(lines) != len(paths):
            raise RuntimeError(f'{inner / _META}: {len(lines)} entries written for {len(paths)} images')
        for item in inner.iterdir():
            item.rename(staging / item.name)
        inner.rmdir()

    manifest = make_manifest({'input': paths}, kind='lmdb', compress_level=compress_level)
    return build_output(lmdb_path, manifest, write, resumable=False, **safety)
