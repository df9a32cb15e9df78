"""Test2K, Test4K and Test8K from DIV8K (docs/method.md#data-sets), the large-image test sets of CADyQ and ClassSR.

=======  ==============  ====================================================
set      DIV8K images    HR
=======  ==============  ====================================================
Test2K   1201 - 1300     8K image bicubic-downsampled by 4 (MATLAB imresize)
Test4K   1301 - 1400     8K image bicubic-downsampled by 2
Test8K   1401 - 1500     8K image as is
=======  ==============  ====================================================

Each HR is then mod-cropped to the scale and its LR made like the benchmark sets' (downsampling first mod-crops
the 8K image to the factor, so the factor divides exactly). Files are picked by their number
(``1201.png`` ... ``1500.png``). Layout: ``<root>/Test2K/HR/1201.png``, ``<root>/Test2K/LR_bicubic/X4/1201.png``.
"""
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from cadyq_plugin.data.benchmark_sets import prepare_eval_set
from cadyq_plugin.data.image_io import PathLike, list_images
from cadyq_plugin.errors import InputError, InputNotFoundError

logger = logging.getLogger(__name__)

# name: (first image, last image, downsampling factor from 8K)
DIV8K_TEST_SETS = {'Test2K': (1201, 1300, 4), 'Test4K': (1301, 1400, 2), 'Test8K': (1401, 1500, 1)}


def div8k_subset(folder: PathLike, first: int, last: int) -> List[Path]:
    """The images of ``folder`` numbered ``first..last`` (by base name); warns when some are missing."""
    chosen = [p for p in list_images(folder) if p.stem.isdigit() and first <= int(p.stem) <= last]
    if not chosen:
        raise InputNotFoundError(f'{folder}: no DIV8K images numbered {first}..{last} (expected {first}.png ...)')
    if len(chosen) != last - first + 1:
        logger.warning('%s: %d of the %d DIV8K images %d..%d found', folder, len(chosen), last - first + 1, first,
                       last)
    return chosen


def prepare_div8k(div8k_folder: PathLike, root: PathLike = 'datasets', scale: int = 4,
                  sets: Sequence[str] = tuple(DIV8K_TEST_SETS), overwrite: bool = False,
                  partial: Optional[str] = None) -> Dict[str, Dict[str, Path]]:
    """Build the chosen DIV8K test sets from the DIV8K HR folder.

    Returns:
        ``{name: {'hr': <root>/<name>/HR, 'lr': <root>/<name>/LR_bicubic/X<scale>}}``.
    """
    unknown = [name for name in sets if name not in DIV8K_TEST_SETS]
    if unknown:
        raise InputError(f'unknown DIV8K test sets {unknown}; expected some of {list(DIV8K_TEST_SETS)}')
    result = {}
    for name in sets:
        first, last, factor = DIV8K_TEST_SETS[name]
        paths = div8k_subset(div8k_folder, first, last)
        result[name] = prepare_eval_set(div8k_folder, Path(root) / name, scale, downsample=factor, paths=paths,
                                        overwrite=overwrite, partial=partial)
    return result
