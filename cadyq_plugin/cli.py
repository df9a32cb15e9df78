"""The ``basicsr`` command: the plugin's ``train`` / ``test`` pipelines (:mod:`cadyq_plugin.train`,
:mod:`cadyq_plugin.test`), plus ``bitops``, ``convert``, ``infer`` and ``export``. Experiments, results and
TensorBoard logs land under the current directory."""
import os
import sys

USAGE = """usage: basicsr <command> [options]

commands:
  train    -opt X.yml [--launcher none|pytorch|slurm] [--auto_resume] [--debug] [--force_yml k=v ...]
  test     -opt X.yml [--skip-missing] [--force_yml k=v ...]   (--force_yml datasets:test_N=~ removes a test set)
  bitops   -opt X.yml [--hr-size 1280x720] [--fab F]
  convert  SRC DST --arch EDSR_CADyQ --quant-mode cadyq [--scale 4] [--trusted] [--overwrite]
  infer    (--arch A | -opt X.yml) --model M.pth -i IN -o OUT [--patch 96 --step 90 --batch 16]
           [--backend fake|int8] [--overwrite]
  export   (--arch A | -opt X.yml) --model M.pth [OUT.pth] [--onnx OUT.onnx] [--overwrite]
"""


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
    """``train_pipeline`` / ``test_pipeline`` with the current directory as root."""
    import cadyq_plugin  # noqa: F401  (registration and compat shim before basicsr)
    if command == 'train':
        from cadyq_plugin.train import train_pipeline
        train_pipeline(os.getcwd(), args)
    else:
        from cadyq_plugin.test import test_pipeline
        test_pipeline(os.getcwd(), args)


def user_errors():
    """Errors whose message says all the user needs (file, key, what to do): printed without a traceback."""
    from cadyq_plugin.checkpoint import CheckpointError
    from cadyq_plugin.config_check import ConfigError
    from cadyq_plugin.data.paired_dataset import DataError
    from cadyq_plugin.archs.wrapper_arch import WrapperConfigError
    from cadyq_plugin.distributed import LaunchError
    from cadyq_plugin.experiment import ExperimentError
    from cadyq_plugin.models.step_guard import TrainingDivergedError
    return (ConfigError, CheckpointError, DataError, ExperimentError, TrainingDivergedError, WrapperConfigError,
            LaunchError)


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
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command in ('train', 'test'):
        from cadyq_plugin.train import RunStopped
        try:
            run_pipeline(command, rest)
        except RunStopped as stopped:  # saved and logged already
            return stopped.exit_code
        except KeyboardInterrupt as err:
            print(f'basicsr {command}: interrupted ({err or "Ctrl-C"}); nothing more was saved', file=sys.stderr)
            return 130
        except user_errors() as err:
            report_error(command, err)
            return 1
        return 0
    if command == 'bitops':
        from cadyq_plugin.tools.bitops_report import main as bitops_main
        return bitops_main(rest)
    if command == 'convert':
        from cadyq_plugin.tools.convert_cli import main as convert_main
        return convert_main(rest)
    if command == 'infer':
        from cadyq_plugin.tools.infer_cli import main as infer_main
        return infer_main(rest)
    if command == 'export':
        from cadyq_plugin.tools.export_cli import main as export_main
        return export_main(rest)
    print(f'basicsr: unknown command {command!r}\n\n{USAGE}', file=sys.stderr)
    return 2


if __name__ == '__main__':
    sys.exit(main())
