"""Reading and writing checkpoints safely: tensors and plain values only, written atomically."""
import io
import logging
import os
import tempfile
import time

import torch


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used as asked; the message names the file and the problem."""


def _umask():
    """This process's umask: read from /proc where it is there (``os.umask`` can only be read by setting it)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_save(obj, path):
    """``torch.save`` into a temporary file beside ``path``, then rename: a crash never truncates ``path``.

    The object is serialised in memory first and written with plain file writes, so a full disk or a quota
    surfaces as the ``OSError`` it is (torch's own writer reports it as ``RuntimeError: unexpected pos``). The
    file gets the permissions of the user's umask, like any file the user creates (``mkstemp`` alone gives 0600).
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, 'wb') as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_with_retry(obj, path, what, tries=3, wait=1.0):
    """:func:`atomic_save`, tried ``tries`` times; then a :class:`CheckpointError` naming the file and the OS
    error. The previous checkpoints are never touched, so the run can continue from them after the fix."""
    error = None
    for attempt in range(tries):
        try:
            atomic_save(obj, path)
            return
        except OSError as err:
            error = err
            logging.getLogger('basicsr').warning(f'cannot save {what} {path}: {err} (try {attempt + 1} of {tries})')
            if attempt + 1 < tries:
                time.sleep(wait)
    raise CheckpointError(f'cannot save {what} {path!r}: {error}; the previous checkpoints are intact, free space '
                          'or fix the folder and run again with --auto_resume')


def load_checkpoint(path, trusted=False):
    """Load ``path`` on the CPU with ``weights_only=True``; full unpickling only when ``trusted``.

    Unpickling runs arbitrary code, so it is never the default: the caller must say the file is trusted.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint {path!r} does not exist')
    try:
        return torch.load(path, map_location='cpu', weights_only=not trusted)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError ... depending on the fault
        hint = ('' if trusted else ' If it is an original-implementation checkpoint that pickles other objects '
                'and you trust its source, pass --trusted.')
        raise CheckpointError(f'cannot load checkpoint {path!r}: {type(err).__name__}: {err}.{hint}') from err


def extract_state_dict(obj, path, keys=('params', 'params_ema', 'state_dict', 'model')):
    """Find the state dict inside a loaded checkpoint (BasicSR ``params``, original ``state_dict``, or bare),
    with any DataParallel ``module.`` prefix removed."""
    for key in keys:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f'checkpoint {path!r} holds no state dict (looked for {list(keys)} or a bare dict of '
                              'tensors)')
    return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in obj.items()}
