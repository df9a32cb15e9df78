"""The ``datasets`` sections: registered types, known keys, roots that exist, the bad-sample policy and what a
paired training set reads."""
import difflib
import os

from cadyq_plugin.config_check.basicsr_keys import IO_BACKENDS, PAIRED_TRAIN_REQUIRED
from cadyq_plugin.config_check.keys import DATASET_KEYS, check_unknown_keys
from cadyq_plugin.data.paired_dataset import BAD_SAMPLE_POLICIES
from cadyq_plugin.problems import did_you_mean, is_count, is_int
from cadyq_plugin.registries import lookup, registered_names


def check_datasets(opt, phase, check_files, problems):
    datasets = opt.get('datasets')
    if not isinstance(datasets, dict) or not datasets:
        problems.missing('datasets', 'at least one dataset section')
        return
    if phase == 'train' and 'train' not in datasets:
        problems.missing('datasets.train', 'the training dataset')
    for name, dataset in datasets.items():
        key = f'datasets.{name}'
        kind = str(name).split('_')[0]
        if phase == 'train' and kind not in ('train', 'val'):
            problems.add(key, name, 'expected a section named train or val[_N] (a test set belongs in a test '
                         'options file)')
            continue
        if not isinstance(dataset, dict):
            problems.add(key, dataset, 'expected a dataset section')
            continue
        dataset_type = dataset.get('type')
        if lookup('DATASET', dataset_type) is None:
            problems.add(f'{key}.type', dataset_type, 'expected a registered dataset' + (
                did_you_mean(dataset_type, registered_names('DATASET')) or ", e.g. 'CADyQPairedImageDataset'"))
        unknown = check_unknown_keys(opt, ('datasets', name), problems)
        _check_roots(dataset, key, check_files, problems)
        _check_bad_sample_policy(dataset, key, kind, problems)
        if kind == 'train' and dataset_type in DATASET_KEYS:
            _check_train_dataset(opt, dataset, key, unknown, problems)


def _check_roots(dataset, key, check_files, problems):
    io_backend = dataset.get('io_backend')
    backend = io_backend.get('type') if isinstance(io_backend, dict) else None
    if (io_backend is not None or dataset.get('type') in DATASET_KEYS) and backend not in IO_BACKENDS:
        problems.add(f'{key}.io_backend.type', backend, f'expected one of {list(IO_BACKENDS)}')
    for root_key in ('dataroot_gt', 'dataroot_lq'):
        root = dataset.get(root_key)
        if root is None or not check_files or backend == 'memcached':
            continue
        root = os.path.expanduser(str(root))
        if backend == 'lmdb' and not os.path.isdir(root):
            problems.add(f'{key}.{root_key}', dataset[root_key], 'expected an existing folder (an LMDB folder)')
        elif backend == 'lmdb' and not os.path.isfile(os.path.join(root, 'meta_info.txt')):
            problems.add(f'{key}.{root_key}', dataset[root_key], 'expected an LMDB folder with meta_info.txt '
                         '(made by basicsr prepare-div2k or BasicSR\'s create_lmdb)')
        elif not os.path.exists(root):
            problems.add(f'{key}.{root_key}', dataset[root_key], 'expected an existing folder')


def _check_bad_sample_policy(dataset, key, kind, problems):
    policy = dataset.get('on_bad_sample')
    if policy is None:
        return
    if policy not in BAD_SAMPLE_POLICIES:
        problems.add(f'{key}.on_bad_sample', policy, f'expected one of {list(BAD_SAMPLE_POLICIES)}')
    elif policy == 'skip' and kind != 'train':
        problems.add(f'{key}.on_bad_sample', policy, "expected 'raise': a validation/test set cannot skip "
                     'images (its metrics would silently cover fewer of them)')


def _check_train_dataset(opt, dataset, key, unknown, problems):
    """The keys a paired training set reads; a missing one that an unknown key resembles was named there."""
    scale = opt.get('scale')
    misspelt = {close for name in unknown for close in difflib.get_close_matches(str(name), PAIRED_TRAIN_REQUIRED,
                                                                                 n=1, cutoff=0.6)}
    for name in PAIRED_TRAIN_REQUIRED:
        if name not in dataset and name not in misspelt:
            problems.missing(f'{key}.{name}', 'a training set reads it')
    gt_size = dataset.get('gt_size')
    if gt_size is not None and not is_count(gt_size):
        problems.add(f'{key}.gt_size', gt_size, 'expected a positive integer (HR patch size)')
    elif gt_size is not None and is_int(scale) and scale > 0 and gt_size % scale:
        problems.add(f'{key}.gt_size', gt_size, f'expected a multiple of scale {scale} (the LR patch is '
                     'gt_size / scale)')
    for name, minimum in (('batch_size_per_gpu', 1), ('num_worker_per_gpu', 0)):
        if name in dataset and not is_count(dataset[name], minimum):
            problems.add(f'{key}.{name}', dataset[name], f'expected an integer >= {minimum}')
    ratio = dataset.get('dataset_enlarge_ratio', 1)
    if not is_count(ratio):
        problems.add(f'{key}.dataset_enlarge_ratio', ratio, 'expected a positive integer')
    if dataset.get('prefetch_mode') not in (None, 'cpu', 'cuda'):
        problems.add(f'{key}.prefetch_mode', dataset['prefetch_mode'], "expected ~, 'cpu' or 'cuda'")
