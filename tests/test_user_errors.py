"""User errors end in one line; a programming error keeps its traceback, in every command."""
import argparse
import logging

import pytest

from cadyq_plugin import cli
from cadyq_plugin.archs.wrapper_arch import WrapperConfigError
from cadyq_plugin.checkpoint import CheckpointError
from cadyq_plugin.config_check import ConfigError
from cadyq_plugin.tools import prepare_args as script_args
from cadyq_plugin.data.image_io import ImageReadError
from cadyq_plugin.data.outputs import PartialOutputError, StaleOutputError
from cadyq_plugin.data.paired_dataset import DataError
from cadyq_plugin.distributed import LaunchError
from cadyq_plugin.errors import InputError, InputNotFoundError, OutputExistsError, UserError
from cadyq_plugin.experiment import ExperimentError
from cadyq_plugin.models.compiling import NetworkCompileError
from cadyq_plugin.models.step_guard import TrainingDivergedError
from cadyq_plugin.quant.int8 import Int8BackendError
from cadyq_plugin.tools import export as export_cli
from cadyq_plugin.tools import infer as infer_cli
from cadyq_plugin.tools.bitops_report import BitopsError
from cadyq_plugin.tools.network_args import NetworkArgError
from cadyq_plugin.tools.quickstart import QuickstartError

# each user error with the builtin class callers caught it by before it was a UserError
USER_ERRORS = {
    ConfigError: ValueError, CheckpointError: ValueError, WrapperConfigError: ValueError, ImageReadError: ValueError,
    BitopsError: ValueError, NetworkArgError: ValueError, InputError: ValueError, DataError: RuntimeError,
    ExperimentError: RuntimeError, TrainingDivergedError: RuntimeError, LaunchError: RuntimeError,
    Int8BackendError: RuntimeError, PartialOutputError: RuntimeError, StaleOutputError: RuntimeError,
    QuickstartError: RuntimeError, NetworkCompileError: RuntimeError, InputNotFoundError: FileNotFoundError,
    OutputExistsError: FileExistsError,
}


@pytest.mark.parametrize('error', USER_ERRORS, ids=lambda error: error.__name__)
def test_user_errors_derive_from_user_error_and_their_old_base(error):
    assert issubclass(error, UserError) and issubclass(error, USER_ERRORS[error])


def _raising(error):
    def run(*args, **kwargs):
        raise error
    return run


@pytest.mark.parametrize('command', [infer_cli, export_cli], ids=['infer', 'export'])
def test_infer_and_export_print_a_user_error_and_keep_a_bug_s_traceback(command, monkeypatch, capsys):
    argv = ['--arch', 'EDSR_CADyQ', '--model', 'm.pth'] + (['-i', 'in', '-o', 'out'] if command is infer_cli else [])
    monkeypatch.setattr(command, 'run', _raising(InputError('--patch 0: expected a positive integer')))
    assert command.main(argv) == 1
    name = 'infer' if command is infer_cli else 'export'
    assert capsys.readouterr().err == f'basicsr {name}: --patch 0: expected a positive integer\n'
    monkeypatch.setattr(command, 'run', _raising(ValueError('a bug: tensor shapes differ')))
    with pytest.raises(ValueError, match='a bug'):
        command.main(argv)


def test_prepare_commands_print_a_user_error_and_keep_a_bug_s_traceback(capsys):
    parser = argparse.ArgumentParser(prog='prepare')
    with pytest.raises(SystemExit) as exit_info:
        script_args.run(parser, _raising(InputNotFoundError('hr: not a folder; expected a folder of images')), [])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == 'prepare: error: hr: not a folder; expected a folder of images\n'
    for bug in (ValueError('a bug'), FileNotFoundError('a bug')):
        with pytest.raises(type(bug), match='a bug'):
            script_args.run(parser, _raising(bug), [])


def test_basicsr_train_prints_a_user_error_and_keeps_a_bug_s_traceback(monkeypatch, capsys):
    monkeypatch.setattr(logging.getLogger('basicsr'), 'handlers', [])  # no run started: the line goes to stderr
    monkeypatch.setattr(cli, 'run_pipeline', _raising(ConfigError('x.yml', ['scale = 0: expected a positive integer'])))
    assert cli.main(['train', '-opt', 'x.yml']) == 1
    assert capsys.readouterr().err == ("basicsr train: ConfigError: options file 'x.yml' has 1 problem:\n"
                                       '  scale = 0: expected a positive integer\n')
    monkeypatch.setattr(cli, 'run_pipeline', _raising(ValueError('a bug')))
    with pytest.raises(ValueError, match='a bug'):
        cli.main(['test', '-opt', 'x.yml'])


def test_a_bad_command_line_value_is_a_user_error():
    with pytest.raises(InputError, match='--step needs --patch'):
        infer_cli.patchwise_options(argparse.Namespace(patch=None, step=90, batch=16))
    with pytest.raises(InputError, match='KEY=PATH'):
        script_args.parse_mapping(['Set5'], '--set')
