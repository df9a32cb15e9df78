"""One import point for dataset preparation; each step lives in its own small module.

=====================  =====================================================================
module                 job
=====================  =====================================================================
``image_io``           read any image as 8-bit BGR (grayscale, alpha, 16-bit handled), write PNG
``transforms``         ``mod_crop``, MATLAB-bicubic ``bicubic_downsample``
``outputs``            never overwrite silently; ``*.partial`` staging, resume / redo, Ctrl-C
``manifest``           what an output was made from (source names and sizes, options)
``folder_steps``       ``make_hr``, ``make_lr``, ``copy_given_lr``
``subimages``          ``extract_subimages`` (BasicSR's DIV2K recipe)
``lmdb_writer``        ``make_lmdb`` around BasicSR's ``make_lmdb_from_imgs``
``div2k``              training LMDBs from DIV2K
``benchmark_sets``     Set5 / Set14 / B100 / Urban100 (any folder of HR images)
``div8k``              Test2K / Test4K / Test8K
``quickstart_data``    a tiny training and validation set from scikit-image's photos
=====================  =====================================================================
"""
from cadyq_plugin.data.benchmark_sets import BENCHMARK_SETS, prepare_benchmark, prepare_eval_set
from cadyq_plugin.data.div2k import prepare_div2k
from cadyq_plugin.data.div8k import DIV8K_TEST_SETS, prepare_div8k
from cadyq_plugin.data.folder_steps import copy_given_lr, make_hr, make_lr
from cadyq_plugin.data.image_io import ImageReadError, read_image, write_png
from cadyq_plugin.data.lmdb_writer import make_lmdb
from cadyq_plugin.data.outputs import PartialOutputError, PreparationInterrupted, StaleOutputError
from cadyq_plugin.data.quickstart_data import build_quickstart_data
from cadyq_plugin.data.subimages import extract_subimages
from cadyq_plugin.data.transforms import bicubic_downsample, mod_crop

__all__ = [
    'BENCHMARK_SETS', 'DIV8K_TEST_SETS', 'ImageReadError', 'PartialOutputError', 'PreparationInterrupted',
    'StaleOutputError', 'bicubic_downsample', 'build_quickstart_data', 'copy_given_lr', 'extract_subimages', 'make_hr',
    'make_lmdb', 'make_lr', 'mod_crop', 'prepare_benchmark', 'prepare_div2k', 'prepare_div8k', 'prepare_eval_set',
    'read_image', 'write_png'
]
