"""``train.compile`` and ``val.compile``: the run's networks compiled with ``torch.compile``.

A network is compiled in place (``nn.Module.compile``: same class, same parameter names and checkpoints), once,
the first time a phase that compiles needs it: the student and the teacher for training, the network that
runs inference (the student or its EMA copy) for validation and ``basicsr test``. A phase whose option is off
runs the same modules eagerly (``torch.compiler.set_stance('force_eager')``), so the two options are
independent. The first compiled step (and the step that ends PAMS calibration, which compiles the graph
without calibration) is timed and logged. A compilation that fails stops the run with a
:class:`NetworkCompileError` naming the network and the cause: nothing falls back to eager silently.

Values: ``true`` (torch.compile's default mode), ``false``, or a mode name (``reduce-overhead`` adds CUDA
graphs). Defaults (:data:`DEFAULTS`): training compiles on CUDA (a one-process run or DDP; DataParallel cannot
run a compiled module and is refused), nothing compiles on the CPU and validation does not compile (its images
have varying sizes).
"""
import contextlib
import functools
import time
import traceback

import torch
from basicsr.utils import get_root_logger

from cadyq_plugin.errors import UserError

COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')
OPTION_KEYS = {'train': ('compile',), 'val': ('compile',)}  # by section (the options check accepts them)
DEFAULTS = {('train', 'cuda'): True, ('train', 'cpu'): False, ('val', 'cuda'): False, ('val', 'cpu'): False}


class NetworkCompileError(UserError, RuntimeError):
    """torch.compile could not compile a network of the run (the message names it and the cause)."""


def check_compile_value(value):
    """None when ``value`` is a valid ``train.compile`` / ``val.compile`` value, else what is expected."""
    if value is None or isinstance(value, bool) or value in COMPILE_MODES:
        return None
    return f'expected true, false or a torch.compile mode ({", ".join(COMPILE_MODES)})'


def allow_many_compiled_networks(count=32):
    """Raise torch.compile's recompile limit to at least ``count``: every CADyQ arch shares one ``forward`` code
    object, whose compiled variants (per network, training or eval, with or without gradients, each validation
    input shape) all count against one limit, 8 by default. A run compiles a handful (student while
    calibrating and after, teacher, validation network); a process that builds many networks compiles more."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, count)


def _compile_errors():
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import InductorError
    return (TorchDynamoException, InductorError)


class NetworkCompiler:
    """Which phases of a run compile, how, and the networks compiled so far.

    Args:
        opt (dict): the run's options (``train.compile``, ``val.compile``, ``num_gpu``, ``dist``).
        device (torch.device): where the networks run (chooses the defaults).
    """

    def __init__(self, opt, device):
        self.device = torch.device(device)
        self.modes = {}
        for phase in ('train', 'val'):
            value = (opt.get(phase) or {}).get('compile')
            problem = check_compile_value(value)
            if problem:
                raise ValueError(f'{phase}.compile = {value!r}: {problem}')
            if value is None:
                value = DEFAULTS[(phase, 'cuda' if self.device.type == 'cuda' else 'cpu')]
                if self._data_parallel(opt):
                    value = False
            elif value is not False and self._data_parallel(opt):
                raise NetworkCompileError(
                    f'{phase}.compile = {value!r}: DataParallel (num_gpu: {opt.get("num_gpu")} without a launcher) '
                    'cannot run a compiled network; launch with torchrun (DDP) or set '
                    f'{phase}.compile: false')
            self.modes[phase] = None if value is False else ('default' if value is True else value)
        self._compiled = {}  # id(net) -> (net, label)
        self._timed = set()

    @staticmethod
    def _data_parallel(opt):
        return not opt.get('dist') and int(opt.get('num_gpu') or 0) > 1 and torch.cuda.is_available()

    def enabled(self, phase):
        return self.modes[phase] is not None

    def prepare(self, net, label, phase):
        """Compile ``net`` in place if ``phase`` compiles (once per network); returns ``net``. ``label`` names it
        in messages (``student EDSR_CADyQ (network_g)``)."""
        if self.enabled(phase) and id(net) not in self._compiled:
            from cadyq_plugin.archs.cadyq_net import CADyQNet
            # the CADyQ archs trace as one graph: a graph break there is a defect, so it is an error; other
            # networks (a backbone's own code) may break the graph into several compiled pieces
            hand_written = isinstance(net, CADyQNet) and not hasattr(net, 'backbone')
            allow_many_compiled_networks()
            net.compile(mode=self.modes[phase], fullgraph=hand_written)
            self._compiled[id(net)] = (net, label)
        return net

    @contextlib.contextmanager
    def running(self, phase, what):
        """Run ``phase`` (eagerly when it does not compile); time ``what`` (the first step, a recompilation) and
        turn a compilation error into a :class:`NetworkCompileError`."""
        if not self._compiled:
            yield
            return
        if not self.enabled(phase):
            with torch.compiler.set_stance('force_eager'):
                yield
            return
        if self.modes[phase] == 'reduce-overhead' and self.device.type == 'cuda':
            torch.compiler.cudagraph_mark_step_begin()  # outputs of the previous step may be overwritten now
        start = time.perf_counter()
        try:
            yield
        except _compile_errors() as err:
            raise NetworkCompileError(self._message(phase, err)) from err
        if what is not None and (phase, what) not in self._timed:
            self._timed.add((phase, what))
            get_root_logger().info(f'{phase}.compile ({self.modes[phase]}): {what} took '
                                   f'{time.perf_counter() - start:.1f} s, compilation included')

    def started(self, phase):
        """Whether ``phase`` has run compiled already."""
        return any(timed == phase for timed, _ in self._timed)

    def _message(self, phase, err):
        culprit = self._culprit(err)
        where = culprit if culprit else ' and '.join(label for _, label in self._compiled.values())
        cause = ' '.join(str(err).strip().splitlines()[:3])[:600]
        return (f'{phase}.compile: torch.compile failed on the {where}: {type(err).__name__}: {cause}. Set '
                f'{phase}.compile: false to run without compiling')

    def _culprit(self, err):
        """The compiled network whose call raised ``err`` (the innermost on the stack), or None (a backward)."""
        found = None
        for frame, _ in traceback.walk_tb(err.__traceback__):
            module = frame.f_locals.get('self')
            if module is not None and id(module) in self._compiled and self._compiled[id(module)][0] is module:
                found = self._compiled[id(module)][1]
        return found


def compiled_training_step(optimize_parameters):
    """Decorate ``optimize_parameters(current_iter)`` so that it runs under the model's ``network_compiler``:
    eagerly when training does not compile, timed at the first step and at the end of calibration."""

    @functools.wraps(optimize_parameters)
    def step(self, current_iter):
        compiler = getattr(self, 'network_compiler', None)
        if compiler is None:
            return optimize_parameters(self, current_iter)
        calib_iters = getattr(self.get_bare_model(self.net_g), 'calib_iters', 0)
        what = None
        if not compiler.started('train'):
            what = 'the first step'
        elif calib_iters and current_iter == calib_iters + 1:
            what = f'the first step after calibration (iter {current_iter}, a second graph)'
        with compiler.running('train', what):
            return optimize_parameters(self, current_iter)

    return step
