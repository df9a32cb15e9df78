"""The numerics policy of a run on CUDA: cuDNN's algorithm search, TF32 and deterministic algorithms.

Options (top-level section ``determinism``, every key optional; ``basicsr train`` and ``basicsr test`` apply it
before any network is built):

- ``tf32`` (default ``false``): TensorFloat-32 in convolutions and matrix products (PyTorch enables it for cuDNN
  convolutions by default). TF32 keeps 10 mantissa bits, so a convolution's output moves by about 1e-3 of its
  size; CADyQ rounds every quantized activation to a few levels, and such a shift moves values across rounding
  boundaries and changes which bit-width a selector chooses. ``false`` computes in full FP32, as on the CPU.
- ``cudnn_benchmark`` (default ``true``, as BasicSR): cuDNN times its algorithms for every new input shape and
  keeps the fastest. The choice can differ between runs, and with it the rounding of the results.
- ``deterministic_algorithms`` (default ``false``): ``torch.use_deterministic_algorithms(True)``, deterministic
  cuDNN algorithms without the search, and the cuBLAS workspace setting this needs
  (``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless set). Two runs on the same GPU model, software and GPU count then
  give bit-identical weights, and a resumed run the weights of an uninterrupted one. An operation without a
  deterministic implementation stops the run with PyTorch's error naming it. Slower.

On the CPU none of these change anything: CPU runs are deterministic already.
"""
import os

import torch

DEFAULTS = {'tf32': False, 'cudnn_benchmark': True, 'deterministic_algorithms': False}
CUBLAS_WORKSPACE = ':4096:8'
OPTION_KEYS = {'': ('determinism',), 'determinism': tuple(DEFAULTS)}  # by section; '' is the top level


def determinism_problems(section):
    """``(key, value, expected)`` for each entry of the ``determinism`` section that cannot run."""
    if section is None:
        return []
    if not isinstance(section, dict):
        return [('determinism', section, f'expected a section with some of {sorted(DEFAULTS)}')]
    problems = [(f'determinism.{key}', value, 'expected true or false') for key, value in section.items()
                if key in DEFAULTS and not isinstance(value, bool)]
    if section.get('deterministic_algorithms') is True and section.get('cudnn_benchmark') is True:
        problems.append(('determinism.cudnn_benchmark', True, 'expected false (or no entry) with '
                         'deterministic_algorithms: true: the timed algorithm search picks by speed, not '
                         'reproducibly'))
    return problems


def resolve(section):
    """The policy of an options section (missing keys at :data:`DEFAULTS`; deterministic algorithms switch the
    algorithm search off)."""
    policy = dict(DEFAULTS, **{k: v for k, v in (section or {}).items() if k in DEFAULTS})
    if policy['deterministic_algorithms']:
        policy['cudnn_benchmark'] = False
    return policy


def apply_determinism(section):
    """Set PyTorch's flags for the policy of ``section`` (the options' ``determinism``); return the policy."""
    policy = resolve(section)
    _set_tf32(policy['tf32'])
    torch.backends.cudnn.benchmark = policy['cudnn_benchmark']
    torch.backends.cudnn.deterministic = policy['deterministic_algorithms']
    if policy['deterministic_algorithms']:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(policy['deterministic_algorithms'])
    return policy


def _set_tf32(enabled):
    precision = 'tf32' if enabled else 'ieee'
    cudnn = torch.backends.cudnn
    if hasattr(cudnn, 'conv') and hasattr(torch.backends.cuda.matmul, 'fp32_precision'):
        cudnn.conv.fp32_precision = precision  # PyTorch >= 2.9; mixing it with the allow_tf32 flags is an error
        cudnn.rnn.fp32_precision = precision
        torch.backends.cuda.matmul.fp32_precision = precision
    else:
        cudnn.allow_tf32 = enabled
        torch.backends.cuda.matmul.allow_tf32 = enabled


def describe(policy):
    """One log line."""
    return ('determinism: ' + ', '.join(f'{key} {str(value).lower()}' for key, value in policy.items()) +
            ' (the options\' determinism section; see docs/distributed_and_gpus.md)')
