"""Reading and writing checkpoints safely: tensors and plain values only, written atomically."""
import os
import tempfile

import torch


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used as asked; the message names the file and the problem."""


def atomic_save(obj, path):
    """``torch.save`` into a temporary file beside ``path``, then rename: a crash never truncates ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=directory)
    try:
        with os.fdopen(fd, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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
