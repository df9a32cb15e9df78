"""What an exact resume needs beyond BasicSR's training state (optimizers, schedulers, iteration, epoch).

BasicSR 1.4.2 resumes a run by restarting the saved epoch from its first batch and by leaving every random
number generator at its fresh seed, so a resumed run sees other batches and other crops than the run it
continues. The plugin's training pipeline uses:

- :func:`load_resume_state`: the state to resume (``--auto_resume`` or ``path.resume_state``), read on the CPU with
  ``weights_only=True``; an unreadable state is a :class:`~cadyq_plugin.checkpoint.CheckpointError` naming it.
- :func:`capture_rng_state` / :func:`restore_rng_state`: the states of Python's ``random``, NumPy's global
  generator, torch's CPU generator and the generator of the process's own CUDA device (the one it trains on; not
  those of every visible GPU, so a run resumes on any number of GPUs) as plain tensors and numbers, so they go
  into the training state and load with ``weights_only=True``.
- :class:`ResumableSampler`: BasicSR's ``EnlargedSampler`` that, in the first epoch after a resume, skips the
  samples the interrupted run had already consumed and restores the saved generator states at the moment the
  interrupted run would have drawn its next batch. It yields :class:`SampleKey` s whose ``seed`` depends only on
  (manual seed, epoch, position in the epoch).
- :class:`SeededDataset`: any dataset (BasicSR's, the plugin's, a user's) read with Python's, NumPy's and torch's
  generators seeded from the sample's key, so its random crops and flips are the same whatever the number of
  dataloader workers and after a resume.
"""
import os
import random
import re
from collections import namedtuple

import numpy as np
import torch
from basicsr.data.data_sampler import EnlargedSampler
from basicsr.utils import check_resume
from mmengine.dist import all_gather_object, get_dist_info

from cadyq_plugin.checkpoint import CheckpointError, load_checkpoint

STATE_KEY = 'cadyq'  # the plugin's entry in a training state: {'rng', 'rng_per_rank', 'bad_steps', ...}

SampleKey = namedtuple('SampleKey', ['index', 'seed'])
SampleKey.__doc__ = 'A dataset index with the seed of its augmentation (see ResumableSampler).'


# ------------------------------------------------------------------------------------------------ RNG state
def capture_rng_state():
    """The global generator states of this process as tensors and plain numbers (``weights_only``-safe)."""
    version, internal, gauss_next = random.getstate()
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        'python': {'version': version, 'state': torch.tensor(internal, dtype=torch.int64), 'gauss_next': gauss_next},
        'numpy': {'keys': torch.from_numpy(keys.astype(np.int64)), 'pos': int(pos), 'has_gauss': int(has_gauss),
                  'cached_gaussian': float(cached_gaussian)},
        'torch': torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state()  # the current device's: the one this process trains on
    return state


def restore_rng_state(state):
    """Inverse of :func:`capture_rng_state` (CUDA states only where CUDA is in use)."""
    py = state['python']
    random.setstate((py['version'], tuple(int(v) for v in py['state'].tolist()), py['gauss_next']))
    npy = state['numpy']
    np.random.set_state(('MT19937', npy['keys'].numpy().astype(np.uint32), npy['pos'], npy['has_gauss'],
                         npy['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    cuda_state = _own_cuda_state(state.get('cuda'))
    if cuda_state is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_state)  # the current device's only


def _own_cuda_state(saved):
    """The CUDA generator state of this process's device in a saved state: the one tensor this version saves,
    or, from a state of an older version (one tensor per GPU visible then), the entry of the current device when
    that GPU existed then; None otherwise."""
    if saved is None or isinstance(saved, torch.Tensor):
        return saved
    if not torch.cuda.is_available():
        return None
    index = torch.cuda.current_device()
    return saved[index] if index < len(saved) else None


def gather_rng_states():
    """Every rank's generator states in rank order (a collective in distributed runs: call it on all ranks)."""
    return all_gather_object(capture_rng_state())


def rng_state_for_rank(extra, rank):
    """The saved generator states of ``rank`` (each rank continues its own sequence), or rank 0's for a state
    saved by a run with fewer ranks."""
    states = extra.get('rng_per_rank') or []
    return states[rank] if rank < len(states) else extra.get('rng')


class preserved_rng_state:  # noqa: N801  (a context manager, used like a function)
    """``with preserved_rng_state(): ...`` leaves the global generators as it found them (for validation,
    which must not change what training draws next)."""

    def __enter__(self):
        self.state = capture_rng_state()
        return self

    def __exit__(self, *exc):
        restore_rng_state(self.state)
        return False


class seeded_rng:  # noqa: N801
    """Inside the block Python's, NumPy's and torch's CPU generators start from ``seed``; afterwards they are
    as they were (CUDA generators are not touched)."""

    def __init__(self, seed):
        self.seed = int(seed)

    def __enter__(self):
        self.saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.default_generator.manual_seed(self.seed)
        return self

    def __exit__(self, *exc):
        random.setstate(self.saved[0])
        np.random.set_state(self.saved[1])
        torch.set_rng_state(self.saved[2])
        return False


def sample_seed(seed, epoch, position):
    """A 32-bit seed that depends only on its arguments (not on worker, process or history)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(position)]).generate_state(1)[0])


# ------------------------------------------------------------------------------------------------ sampler, data
class ResumableSampler(EnlargedSampler):
    """``EnlargedSampler`` (same order: a permutation seeded by the epoch) that can continue a resumed epoch and
    yields :class:`SampleKey` s for :class:`SeededDataset`.

    Args: as ``EnlargedSampler``, plus ``seed``: the run's ``manual_seed``.
    """

    def __init__(self, dataset, num_replicas, rank, ratio=1, seed=0):
        super().__init__(dataset, num_replicas, rank, ratio)
        self.seed = int(seed)
        self._resume = None

    def resume(self, epoch, skip, rng_state=None):
        """In epoch ``epoch`` start after the first ``skip`` samples; restore ``rng_state`` before drawing.

        Holds for every iteration over epoch ``epoch`` until :meth:`set_epoch` moves to another epoch: BasicSR's
        ``CPUPrefetcher`` makes a throwaway iterator before the training loop calls ``set_epoch`` and ``reset``
        (with workers, that iterator already draws indices), and the last one made is the one that trains.
        """
        self._resume = (int(epoch), int(skip), rng_state)

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        if self._resume is not None and self._resume[0] != epoch:
            self._resume = None

    def __iter__(self):
        indices = list(super().__iter__())
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            _, skip, rng_state = self._resume
            start = min(skip, len(indices))
            if rng_state is not None:
                # the interrupted run was about to draw the next batch with exactly these generator states
                restore_rng_state(rng_state)
        for offset, index in enumerate(indices[start:], start):
            # global position of the sample in this epoch's permutation (unique across ranks)
            yield SampleKey(index, sample_seed(self.seed, self.epoch, offset * self.num_replicas + self.rank))


class SeededDataset(torch.utils.data.Dataset):
    """``dataset`` read by :class:`SampleKey`: each sample's randomness is a function of (seed, epoch, index),
    whichever process or dataloader worker reads it. Attributes are the wrapped dataset's (``opt``, ``paths``)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        if not isinstance(key, SampleKey):
            return self.dataset[key]
        with seeded_rng(key.seed):
            return self.dataset[key.index]

    def __getattr__(self, name):
        if name == 'dataset':  # not set yet (unpickling in a worker): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)


def consumed_batches(state_epoch, state_iter, batches_per_epoch):
    """Batches of epoch ``state_epoch`` used by iterations ``1..state_iter`` (the pipeline runs
    ``batches_per_epoch`` iterations per epoch, epoch 0 first); ``None`` when the numbers do not fit (data or
    batch size changed)."""
    consumed = state_iter - state_epoch * batches_per_epoch
    return consumed if 0 <= consumed <= batches_per_epoch else None


# ------------------------------------------------------------------------------------------------ the state
_STALE_TEMPORARY = re.compile(r'^\..+\.(pth|state)\.[A-Za-z0-9_]+\.tmp$')


def remove_stale_temporaries(opt, logger=print):
    """Delete the temporary files of saves that a killed run never finished (``.<name>.<random>.tmp`` beside
    ``models/*.pth`` and ``training_states/*.state``): they are incomplete by construction."""
    for key in ('models', 'training_states'):
        folder = opt['path'].get(key)
        if not folder or not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            if _STALE_TEMPORARY.match(name):
                os.remove(os.path.join(folder, name))
                logger(f'removed {os.path.join(folder, name)}: an unfinished save of an interrupted run')


def latest_state_path(opt):
    """The training state to resume: ``path.resume_state``, else with ``--auto_resume`` the newest state of the
    experiment, else None."""
    if not opt.get('auto_resume'):
        return opt['path'].get('resume_state')
    folder = opt['path']['training_states']
    iterations = [int(name[:-len('.state')]) for name in (os.listdir(folder) if os.path.isdir(folder) else [])
                  if name.endswith('.state') and name[:-len('.state')].isdigit()]
    return os.path.join(folder, f'{max(iterations)}.state') if iterations else None


def load_resume_state(opt):
    """Load the state to resume onto the CPU (``weights_only=True``) and point the networks at its iteration.

    Sets ``opt['path']['resume_state']`` and applies BasicSR's ``check_resume`` (every ``pretrain_network_<x>``
    becomes ``models/net_<x>_<iter>.pth``), except that networks that are never saved (the frozen teacher
    ``network_t``) keep their configured weights: BasicSR would point them at a file that does not exist, so every
    stage-2/3 resume failed. Returns None for a fresh run.
    """
    path = latest_state_path(opt)
    if path is None:
        return None
    remove_stale_temporaries(opt)
    try:
        state = load_checkpoint(path, pickle_hint='A training state holds tensors and plain values only.')
    except CheckpointError as err:
        raise CheckpointError(f'cannot load training state {path!r}: {err} Move it out of training_states to resume '
                              'from the previous one') from err
    if not isinstance(state, dict) or not isinstance(state.get('iter'), int):
        raise CheckpointError(f'training state {path!r} holds no iteration number: not a training state of a '
                              'BasicSR run')
    opt['path']['resume_state'] = path
    configured = {key: value for key, value in opt['path'].items() if key.startswith('pretrain_network_')}
    check_resume(opt, state['iter'])
    for key, value in configured.items():
        if key != 'pretrain_network_g' and value and not os.path.isfile(opt['path'][key]):
            print(f'{opt["path"][key]} does not exist (a frozen network is never saved): keep {key} = {value}')
            opt['path'][key] = value
    return state


def resume_sampler(sampler, loader, state, logger):
    """Make ``sampler`` continue the saved epoch exactly after the batches the interrupted run consumed."""
    extra = state.get(STATE_KEY) or {}
    consumed = consumed_batches(state['epoch'], state['iter'], len(loader))
    if consumed is None:
        logger.warning(f'resume: iteration {state["iter"]} is not in epoch {state["epoch"]} with {len(loader)} '
                       'batches per epoch (data or batch size changed?): the epoch restarts from its first batch')
    else:
        logger.info(f'resume: epoch {state["epoch"]} continues after its first {consumed} batches')
    sampler.resume(state['epoch'], (consumed or 0) * loader.batch_size, rng_state_for_rank(extra, get_dist_info()[0]))
