"""What an exact resume needs beyond BasicSR's training state (optimizers, schedulers, iteration, epoch).

BasicSR 1.4.2 resumes a run by restarting the saved epoch from its first batch and by leaving every random
number generator at its fresh seed, so a resumed run sees other batches and other crops than the run it
continues. This module adds:

- :func:`capture_rng_state` / :func:`restore_rng_state`: the states of Python's ``random``, NumPy's global
  generator and torch's CPU (and CUDA) generators as plain tensors and numbers, so they go into the training
  state and load with ``weights_only=True``.
- :class:`ResumableSampler`: BasicSR's ``EnlargedSampler`` that, in the first epoch after a resume, skips the
  samples the interrupted run had already consumed, and restores the saved generator states at the moment the
  interrupted run would have drawn its next batch. It also hands datasets that accept them
  (``accepts_sample_keys``) a :class:`SampleKey` whose ``seed`` depends only on (manual seed, epoch, position
  in the epoch), so augmentation is reproducible whatever the number of dataloader workers.
- the hand-over of the loaded state from ``load_resume_state`` to the dataloader (:func:`set_pending_resume`,
  :func:`take_pending_resume`), which BasicSR's pipeline builds in between.
"""
import random
from collections import namedtuple

import numpy as np
import torch
from basicsr.data.data_sampler import EnlargedSampler

STATE_KEY = 'cadyq'  # the plugin's entry in a training state: {'rng': ..., 'bad_steps': int}

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
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state):
    """Inverse of :func:`capture_rng_state` (CUDA states only where CUDA is in use)."""
    py = state['python']
    random.setstate((py['version'], tuple(int(v) for v in py['state'].tolist()), py['gauss_next']))
    npy = state['numpy']
    np.random.set_state(('MT19937', npy['keys'].numpy().astype(np.uint32), npy['pos'], npy['has_gauss'],
                         npy['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if state.get('cuda') is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def gather_rng_states():
    """Every rank's generator states in rank order (a collective in distributed runs: call it on all ranks)."""
    state = capture_rng_state()
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [state]
    states = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, state)
    return states


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


def sample_seed(seed, epoch, position):
    """A 32-bit seed that depends only on its arguments (not on worker, process or history)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(position)]).generate_state(1)[0])


# ------------------------------------------------------------------------------------------------ sampler
class ResumableSampler(EnlargedSampler):
    """``EnlargedSampler`` (same order: a permutation seeded by the epoch) that can continue a resumed epoch.

    Args: as ``EnlargedSampler``; ``seed`` (attribute) is the run's ``manual_seed``, set by the pipeline patch.
    """

    def __init__(self, dataset, num_replicas, rank, ratio=1):
        super().__init__(dataset, num_replicas, rank, ratio)
        self.seed = 0
        self.keyed = bool(getattr(dataset, 'accepts_sample_keys', False))
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
            if self.keyed:
                # global position of the sample in this epoch's permutation (unique across ranks)
                yield SampleKey(index, sample_seed(self.seed, self.epoch, offset * self.num_replicas + self.rank))
            else:
                yield index


# ------------------------------------------------------------------------------------------------ hand-over
_pending = {'state': None}


def set_pending_resume(state):
    """Remember the training state being resumed (``None``: a fresh run) for :func:`take_pending_resume`."""
    _pending['state'] = state


def take_pending_resume():
    state, _pending['state'] = _pending['state'], None
    return state


def consumed_batches(state_epoch, state_iter, batches_per_epoch):
    """Batches of epoch ``state_epoch`` used by iterations ``1..state_iter`` (BasicSR runs ``batches_per_epoch``
    iterations per epoch, epoch 0 first); ``None`` when the numbers do not fit (data or batch size changed)."""
    consumed = state_iter - state_epoch * batches_per_epoch
    return consumed if 0 <= consumed <= batches_per_epoch else None
