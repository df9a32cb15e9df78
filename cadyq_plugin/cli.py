"""The ``basicsr`` command. ``train`` and ``test`` run the plugin's pipelines (:mod:`cadyq_plugin.train`,
:mod:`cadyq_plugin.test`); every other command is a module of :mod:`cadyq_plugin.tools` with ``build_parser()``
(its ``prog`` is ``basicsr <command>``) and ``main(argv)`` (``argv`` a list; returns the exit status).
:data:`COMMANDS` is the one list of commands: the dispatch and ``basicsr --help`` are made from it. A new command is
a new module there, one line here and a smoke test that runs it through :func:`main`. Experiments, results and
TensorBoard logs land under the current directory."""
import importlib
import os
import sys
from typing import NamedTuple

from cadyq_plugin.errors import UserError


class Command(NamedTuple):
    module: str  # a pipeline module (train, test) or a tools module with build_parser() and main(argv)
    summary: str  # its line in `basicsr --help`


PIPELINES = ('train', 'test')
COMMANDS = {
    'train': Command('cadyq_plugin.train', 'a training stage: -opt X.yml [--launcher none|pytorch|slurm] [--auto_resume] '
                     '[--force_yml k=v]'),
    'test': Command('cadyq_plugin.test', 'test sets: -opt X.yml [--skip-missing] [--force_yml k=v] '
                    '(datasets:test_N=~ drops a set)'),
    'bitops': Command('cadyq_plugin.tools.bitops_report', 'MACs and FP / W8A8 / CADyQ BitOPs per layer of an options '
                      'file\'s network'),
    'convert': Command('cadyq_plugin.tools.convert', 'an original-implementation (or BasicSR EDSR) checkpoint -> a '
                       'plugin checkpoint'),
    'infer': Command('cadyq_plugin.tools.infer', 'super-resolve your own images and write their bit maps'),
    'export': Command('cadyq_plugin.tools.export', 'a trained checkpoint -> an int8 deployment checkpoint and/or an '
                      'ONNX graph'),
    'int8-accuracy': Command('cadyq_plugin.tools.int8_accuracy', 'PSNR / SSIM / FAB of a network with 8-bit FP '
                             'layers against the reference, on held-out photos'),
    'prepare-div2k': Command('cadyq_plugin.tools.prepare_div2k', 'DIV2K training LMDBs (HR sub-images and their '
                             'bicubic LR)'),
    'prepare-benchmark': Command('cadyq_plugin.tools.prepare_benchmark', 'benchmark test sets (Set5, Set14, B100, '
                                 'Urban100, ...): HR mod-cropped, bicubic LR'),
    'prepare-div8k': Command('cadyq_plugin.tools.prepare_div8k', 'Test2K / Test4K / Test8K from DIV8K'),
    'quickstart': Command('cadyq_plugin.tools.quickstart', 'FP -> PAMS -> CADyQ on a small photo set, test each '
                          'stage, print PSNR / SSIM / FAB / BitOPs'),
    'benchmark': Command('cadyq_plugin.tools.benchmark', 'speed and memory of CADyQ against FP and PAMS, and of the '
                         'inference backends, side by side'),
    'gpu-check': Command('cadyq_plugin.tools.gpu_check', 'the acceptance run on the first GPU: every check, one '
                         'markdown report'),
    'budget-evidence': Command('cadyq_plugin.tools.budget_evidence', 'train to several bit budgets and report target '
                               'against reached FAB (table and plot)'),
    'evidence': Command('cadyq_plugin.tools.evidence', 'does CADyQ spend bits by content: budgets, bits against '
                        'content, quality at equal bits (docs/evidence.md)'),
    'selector-probe': Command('cadyq_plugin.tools.selector_probe', 'instrumented training: what the bit selectors '
                              'see, choose and learn, per window of iterations'),
}


def usage():
    """``basicsr --help``: one line per command of :data:`COMMANDS`."""
    width = max(len(name) for name in COMMANDS)
    lines = [f'  {name:{width}s}  {command.summary}' for name, command in COMMANDS.items()]
    return ('usage: basicsr <command> [options]\n\ncommands:\n' + '\n'.join(lines) +
            '\n\n`basicsr <command> --help` lists the options of a command.\n')


def leading_local_rank_last(argv):
    """``python -m torch.distributed.launch`` (without ``--use-env``) puts ``--local-rank=N`` before the
    command; move it behind the command, where the pipelines' parser expects it."""
    leading = []
    while argv and argv[0].startswith(('--local-rank', '--local_rank')):
        leading.append(argv.pop(0))
        if '=' not in leading[-1] and argv:
            leading.append(argv.pop(0))
    return argv[:1] + leading + argv[1:] if leading else argv


def run_pipeline(command, args):
    """``train_pipeline`` / ``test_pipeline`` of the command's module with the current directory as root."""
    import cadyq_plugin  # noqa: F401  (registration and compat shim before basicsr)
    pipeline = getattr(importlib.import_module(COMMANDS[command].module), f'{command}_pipeline')
    pipeline(os.getcwd(), args)


def report_error(command, err):
    """Print ``err`` without a traceback, into BasicSR's log too (file and console) when the run got that far."""
    import logging
    from cadyq_plugin.models.step_guard import TrainingDivergedError
    text = str(err).strip()
    if 'Original Traceback' in text:  # re-raised from a dataloader worker: keep the worker's message only
        text = text.splitlines()[-1].split(': ', 1)[-1]
    message = f'basicsr {command}: {type(err).__name__}: {text}'
    logger = logging.getLogger('basicsr')
    if logger.handlers and not isinstance(err, TrainingDivergedError):  # that one was logged where it arose
        logger.error(message)
    else:
        print(message, file=sys.stderr)


def main(argv=None):
    argv = leading_local_rank_last(list(sys.argv[1:] if argv is None else argv))
    if not argv or argv[0] in ('-h', '--help'):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command in PIPELINES:
        from cadyq_plugin.train import RunStopped
        try:
            run_pipeline(command, rest)
        except RunStopped as stopped:  # saved and logged already
            return stopped.exit_code
        except KeyboardInterrupt as err:
            print(f'basicsr {command}: interrupted ({err or "Ctrl-C"}); nothing more was saved', file=sys.stderr)
            return 130
        except UserError as err:
            report_error(command, err)
            return 1
        return 0
    if command in COMMANDS:
        return importlib.import_module(COMMANDS[command].module).main(rest)
    print(f'basicsr: unknown command {command!r}\n\n{usage()}', file=sys.stderr)
    return 2


if __name__ == '__main__':
    sys.exit(main())
