"""Reading and writing checkpoints safely: tensors and plain values only, written atomically."""
import io
import logging
import os
import re
import struct
import tempfile
import time
import zipfile

import torch

from cadyq_plugin.errors import UserError


class CheckpointError(UserError, ValueError):
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


# What a training or test run says about a checkpoint that pickles objects; ``basicsr convert``, which can
# unpickle, passes its own hint.
PICKLE_HINT = ('An original-implementation checkpoint must go through `basicsr convert` first; otherwise save the '
               "weights alone (torch.save({'params': net.state_dict()}, path)).")
_ZIP_MAGIC = b'PK\x03\x04'
_LEGACY_MAGIC = torch.serialization.MAGIC_NUMBER.to_bytes(10, 'little')  # torch.save before the zip format
_FILE_KINDS = ((b'\x89PNG', 'a PNG image'), (b'\xff\xd8\xff', 'a JPEG image'), (b'BM', 'a BMP image'),
               (b'GIF8', 'a GIF image'), (b'\x1f\x8b', 'a gzip file'))


def load_checkpoint(path, trusted=False, pickle_hint=PICKLE_HINT):
    """Load ``path`` on the CPU with ``weights_only=True``; full unpickling only when ``trusted``.

    Unpickling runs arbitrary code, so it is never the default: the caller must say the file is trusted. Every
    fault gets its own :class:`CheckpointError` naming the file: missing, empty, truncated, not a checkpoint,
    pickled objects (with ``pickle_hint``, the advice that fits the caller), or otherwise damaged.
    """
    _check_checkpoint_file(path)
    try:
        return torch.load(path, map_location='cpu', weights_only=not trusted)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError ... depending on the fault
        refused = re.search(r'Unsupported global: GLOBAL ([\w.]+)', str(err))
        if refused and not trusted:
            raise CheckpointError(f'checkpoint {path!r} pickles Python objects ({refused.group(1)}), which loading '
                                  'with weights_only=True refuses: unpickling runs code from the file. '
                                  f'{pickle_hint}') from err
        unpickler = re.search(r'WeightsUnpickler error:\s*(.+)', str(err))  # torch's own words, not its advice
        reason = unpickler.group(1).strip() if unpickler else (str(err).strip().splitlines() or [''])[0]
        if isinstance(err, (EOFError, struct.error)) or re.search(r'EOF|truncated', reason):
            raise CheckpointError(_truncated(path, f'{type(err).__name__}: {reason}')) from err
        raise CheckpointError(f'checkpoint {path!r} is damaged ({type(err).__name__}: {reason}); copy it again or '
                              'use another checkpoint') from err


def _truncated(path, detail):
    return (f'checkpoint {path!r} is truncated ({os.path.getsize(path)} bytes, {detail}): an interrupted save, '
            'copy or download; copy it again or use another checkpoint')


def _check_checkpoint_file(path):
    """Refuse, by what its bytes show, a file that cannot be a complete checkpoint (before torch tries it)."""
    if not os.path.exists(path):
        raise CheckpointError(f'checkpoint {path!r} does not exist')
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint {path!r} is not a file')
    if os.path.getsize(path) == 0:
        raise CheckpointError(f'checkpoint {path!r} is empty (0 bytes): an interrupted save, copy or download; '
                              'copy it again or use another checkpoint')
    with open(path, 'rb') as f:
        head = f.read(64)
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise CheckpointError(_truncated(path, 'the end of its zip archive is missing'))
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith('/data.pkl') or name == 'data.pkl' for name in archive.namelist()):
                raise CheckpointError(f'{path!r} is not a PyTorch checkpoint: a zip archive without the data.pkl '
                                      'that torch.save writes')
        return
    if head.startswith(b'\x80') and _LEGACY_MAGIC in head[:32]:
        return  # the pre-1.6 format: faults inside it surface from torch.load (reported as damaged)
    raise CheckpointError(f'{path!r} is not a PyTorch checkpoint: it is {_describe(head)}')


def _describe(head):
    """What the first bytes of a file that is not a checkpoint look like, for the error message."""
    kind = next((name for magic, name in _FILE_KINDS if head.startswith(magic)), None)
    if kind is not None:
        return kind
    if head.startswith(b'\x80'):
        return 'a Python pickle not written by torch.save'
    text = head.decode('utf-8', 'ignore')
    if text.strip() and all(c.isprintable() or c in '\t\r\n' for c in text):
        return f'a text file (starts with {text.strip().splitlines()[0][:40]!r})'
    return f'unrecognised content (starts with {head[:8]!r})'


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
