"""Experiment (and results) folders owned by one run at a time, and the signals that stop a run cleanly.

BasicSR archives an existing ``experiments/<name>`` when a new run starts, so a second run with the name of a
running one moved the first run's folder away while the first kept writing into the new one. A run now holds
``experiments/.<name>.running`` (``results/.<name>.running`` for tests), created atomically before any folder
is touched and removed when the run ends. A lock whose process is gone (a crash, SIGKILL) is stale and taken
over, so ``--auto_resume`` after a crash just works.
"""
import json
import logging
import os
import signal
import socket
import sys
import threading
import time

from mmengine.dist import all_reduce, broadcast_object_list, get_dist_info

from cadyq_plugin.errors import UserError


class ExperimentError(UserError, RuntimeError):
    """An experiment folder that this run cannot use; the message names the folder and what to do."""


def _boot_id():
    try:
        with open('/proc/sys/kernel/random/boot_id') as f:
            return f.read().strip()
    except OSError:
        return None


def _start_ticks(pid):
    """The process's start time in clock ticks since boot (Linux), to tell a live run from a reused pid."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return int(f.read().rsplit(')', 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(holder):
    """Whether the process described by a lock file still runs (a lock of another host counts as alive)."""
    if holder.get('host') != socket.gethostname():
        return True
    pid = holder.get('pid')
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's live process
    if holder.get('boot_id') and holder.get('boot_id') != _boot_id():
        return False
    ticks = _start_ticks(pid)
    return holder.get('start_ticks') is None or ticks is None or ticks == holder['start_ticks']


class RunLock:
    """``<parent>/.<name>.running`` for the folder ``<parent>/<name>``: :meth:`acquire` or raise."""

    def __init__(self, folder, command):
        folder = os.path.abspath(folder)
        self.folder = folder
        self.path = os.path.join(os.path.dirname(folder), f'.{os.path.basename(folder)}.running')
        self.command = command
        self.held = False

    def read(self):
        try:
            with open(self.path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def acquire(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.read()
                if holder is not None and _alive(holder):
                    raise ExperimentError(self._in_use(holder)) from None
                os.remove(self.path)  # stale: its run crashed or was killed
                continue
            with os.fdopen(fd, 'w') as f:
                json.dump({'pid': os.getpid(), 'host': socket.gethostname(), 'boot_id': _boot_id(),
                           'start_ticks': _start_ticks(os.getpid()), 'started': time.strftime('%Y-%m-%d %H:%M:%S'),
                           'command': self.command}, f)
            self.held = True
            return self
        raise ExperimentError(f'cannot take the lock {self.path!r} of {self.folder!r}: another run keeps taking it')

    def _in_use(self, holder):
        where = f'process {holder.get("pid")} on {holder.get("host")}'
        message = (f'{self.folder!r} is in use by {where} (started {holder.get("started")}: '
                   f'{holder.get("command")}); that run is left untouched. Wait for it to end, stop it, or give this '
                   "run another name (--force_yml name=...)")
        if holder.get('host') != socket.gethostname():
            message += f'. If that run is no longer running, delete {self.path}'
        return message

    def release(self):
        if self.held:
            holder = self.read()
            if holder is not None and holder.get('pid') == os.getpid():
                os.remove(self.path)
            self.held = False


def acquire_on_rank0(folder, command):
    """Rank 0 takes the folder's :class:`RunLock`; every rank raises the same error if it is in use."""
    rank, world_size = get_dist_info()
    lock, outcome = RunLock(folder, command), [None]
    if rank == 0:
        try:
            lock.acquire()
        except ExperimentError as err:
            outcome = [str(err)]
    if world_size > 1:
        broadcast_object_list(outcome)
    if outcome[0] is not None:
        raise ExperimentError(outcome[0])
    return lock


class LogFileHandler(logging.FileHandler):
    """The run's log file; a write that fails (disk full, read-only) is reported once, in one line, instead of a
    traceback per record (the console keeps logging, and the checkpoint saves say what failed)."""

    def handleError(self, record):
        if not getattr(self, 'failed', False):
            self.failed = True
            print(f'cannot write the log file {self.baseFilename}: {sys.exc_info()[1]}; logging to the console only',
                  file=sys.stderr, flush=True)


def run_logger(log_file):
    """BasicSR's root logger of the run (console, and the log file on rank 0) with :class:`LogFileHandler`."""
    from basicsr.utils import get_root_logger
    logger = get_root_logger(logger_name='basicsr', log_level=logging.INFO, log_file=log_file)
    for handler in list(logger.handlers):
        if type(handler) is logging.FileHandler:
            quiet = LogFileHandler(handler.baseFilename, 'a')
            quiet.setFormatter(handler.formatter)
            quiet.setLevel(handler.level)
            logger.removeHandler(handler)
            handler.close()
            logger.addHandler(quiet)
    return logger


def command_line(command, argv):
    """The command as the user typed it (for the lock file and the copied options file)."""
    return ' '.join(['basicsr', command] + list(argv))


def guarded_setup(step, folder):
    """Run a set-up step that writes under ``folder``; an OS error (read-only, full, no permission) becomes one
    :class:`ExperimentError` line naming the folder."""
    try:
        return step()
    except OSError as err:
        raise ExperimentError(f'cannot set up {folder!r}: {err}') from err


class GracefulStop:
    """SIGTERM (Slurm's preemption and time limit, ``kill``) and SIGINT (Ctrl-C): the first one lets the current
    iteration finish so that the run saves and exits; a second one stops at once.

    In a distributed run every rank must stop at the same iteration, before it fetches the next batch (the
    dataloader workers got the signal too and are gone), so the ranks agree after every iteration: one all-reduce
    of a CPU flag over gloo. With nccl a gloo group is made for it, so the agreement never waits for the GPU.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum = None
        self._previous = {}
        self._group = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread only
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        self._group = cpu_group()
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False

    def _handle(self, signum, frame):
        if self.signum is not None:  # the second signal: no more waiting
            raise KeyboardInterrupt(f'{signal.Signals(signum).name} received twice')
        self.signum = signum
        print(f'{signal.Signals(signum).name} received: saving after the current iteration (send it again to stop '
              'at once)', file=sys.stderr, flush=True)

    def requested(self):
        """Whether any rank got a signal (every rank must agree, so all of them stop at the same iteration)."""
        if get_dist_info()[1] == 1:
            return self.signum is not None
        import torch
        flag = torch.tensor([0.0 if self.signum is None else float(self.signum)])
        all_reduce(flag, op='max', group=self._group)  # CPU tensors over gloo: no GPU involved
        if flag.item() and self.signum is None:
            self.signum = int(flag.item())
        return self.signum is not None

    @property
    def name(self):
        return signal.Signals(self.signum).name if self.signum else None


def cpu_group():
    """A process group whose collectives run on CPU tensors (gloo): the default group when it is gloo, else a new
    gloo group of all ranks (a collective: every rank calls it); None outside a process group."""
    if get_dist_info()[1] == 1:
        return None
    import torch.distributed as dist
    return None if dist.get_backend() == 'gloo' else dist.new_group(backend='gloo')


def _quit_quietly(signum, frame):
    os._exit(0)


class WorkerInit:
    """A dataloader ``worker_init_fn`` that first makes SIGTERM/SIGINT end the worker quietly (exit status 0), then
    runs ``inner`` (BasicSR's per-worker seeding).

    Slurm and Ctrl-C signal every process, workers included. A worker killed by a signal makes PyTorch raise in the
    main process at once, in the middle of a training step; a worker that exits quietly is noticed only at the next
    batch, which the main process no longer fetches: it saves and stops (:class:`GracefulStop`).
    """

    def __init__(self, inner=None):
        self.inner = inner

    def __call__(self, worker_id):
        for signum in GracefulStop.SIGNALS:
            signal.signal(signum, _quit_quietly)
        if self.inner is not None:
            self.inner(worker_id)
