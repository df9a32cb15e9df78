"""The ``basicsr`` command: BasicSR's train/test pipelines with the plugin registered, plus ``bitops`` and
``convert``. Experiments, results and TensorBoard logs land under the current directory."""
import argparse
import os
import sys

USAGE = """usage: basicsr <command> [options]

commands:
  train    -opt X.yml [--launcher none|pytorch|slurm] [--auto_resume] [--debug] [--force_yml k=v ...]
  test     -opt X.yml
  bitops   -opt X.yml [--hr-size 1280x720] [--fab F]
  convert  SRC DST --arch EDSR_CADyQ --quant-mode cadyq [--scale 4] [--trusted] [--overwrite]
"""


def normalize_basicsr_args(args):
    """Accept ``--local-rank`` (torchrun's spelling) as well as BasicSR's ``--local_rank``."""
    normalized = []
    for arg in args:
        if arg == '--local-rank' or arg.startswith('--local-rank='):
            arg = arg.replace('--local-rank', '--local_rank', 1)
        normalized.append(arg)
    return normalized


def run_pipeline(command, args):
    """Run BasicSR's own ``train_pipeline``/``test_pipeline`` with the current directory as root."""
    import cadyq_plugin  # noqa: F401  (registration and compat shim before basicsr's pipelines import)
    from cadyq_plugin import _compat
    _compat.patch_training_pipeline()
    _compat.patch_distributed()
    sys.argv = [f'basicsr {command}'] + normalize_basicsr_args(args)
    if command == 'train':
        from basicsr.train import train_pipeline
        train_pipeline(os.getcwd())
    else:
        from basicsr.test import test_pipeline
        test_pipeline(os.getcwd())


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command in ('train', 'test'):
        run_pipeline(command, rest)
        return 0
    if command == 'bitops':
        from cadyq_plugin.tools.bitops_report import main as bitops_main
        return bitops_main(rest)
    if command == 'convert':
        from cadyq_plugin.tools.convert_cli import main as convert_main
        return convert_main(rest)
    print(f'basicsr: unknown command {command!r}\n\n{USAGE}', file=sys.stderr)
    return 2


if __name__ == '__main__':
    sys.exit(main())
