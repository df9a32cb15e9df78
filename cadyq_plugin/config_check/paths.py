"""The ``path`` section: checkpoints to load and a training state to resume must exist."""
import os

from cadyq_plugin.config_check.model_type import is_cadyq_model


def check_paths(opt, resuming, check_files, problems):
    path = opt.get('path')
    if path is None:
        path = {}
    if not isinstance(path, dict):
        problems.add('path', path, 'expected a section')
        return
    for key, value in path.items():
        if not str(key).startswith('pretrain_network_') or value is None:
            continue
        if key == 'pretrain_network_g' and resuming:
            continue  # resuming replaces it with the resumed iteration's checkpoint
        if not isinstance(value, str):
            problems.add(f'path.{key}', value, 'expected the path of a checkpoint file')
        elif check_files and not os.path.isfile(os.path.expanduser(value)):
            problems.add(f'path.{key}', value, 'expected an existing checkpoint file' + (
                ' (run the previous stage or convert a checkpoint first)' if is_cadyq_model(opt) else ''))
    resume_state = path.get('resume_state')
    if resume_state is not None and check_files and not os.path.isfile(os.path.expanduser(str(resume_state))):
        problems.add('path.resume_state', resume_state, 'expected an existing training state file')
