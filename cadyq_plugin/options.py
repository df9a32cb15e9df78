"""The one parse of a ``basicsr train|test`` command line and its options file.

BasicSR's ``parse_options`` reads ``sys.argv`` itself, joins the process group (nccl only) before it applies
``--force_yml``, creates a new key for a misspelt ``--force_yml`` path (``train:total_iters=4`` trains for the
default length) and leaves checking to whatever fails later. :func:`parse_options` reads the command line and the
yml once, applies ``--force_yml`` strictly, checks the result (:mod:`cadyq_plugin.config_check`) before any folder,
data or process group exists, then sets up the process group, seeds and paths as BasicSR does. The checked dict
is what the pipeline, the distributed set-up and the models use.
"""
import argparse
import ast
import os
import random
from os import path as osp

import torch
import yaml

from cadyq_plugin.config_check import ConfigError, check_options, did_you_mean, known_keys

LAUNCHERS = ('none', 'pytorch', 'slurm')


def command_parser(command):
    """The arguments of ``basicsr train`` / ``basicsr test`` (BasicSR's, plus ``--skip-missing`` for tests)."""
    parser = argparse.ArgumentParser(prog=f'basicsr {command}')
    parser.add_argument('-opt', required=True, help='options file (yml)')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    parser.add_argument('--auto_resume', action='store_true', help='continue from the newest training state')
    parser.add_argument('--debug', action='store_true')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument('--force_yml', nargs='+', default=None, metavar='SECTION:KEY=VALUE',
                        help='override options, e.g. train:total_iter=1000; datasets:test_2=~ removes a test set')
    if command == 'test':
        parser.add_argument('--skip-missing', action='store_true',
                            help='run the test sets whose data folders exist and name the others')
    return parser


def read_yml(yml_path):
    """Parse ``yml_path`` the way BasicSR does (ordered mappings); a bad file raises :class:`ConfigError`."""
    from basicsr.utils.options import ordered_yaml
    try:
        with open(yml_path, mode='r') as f:
            opt = yaml.load(f, Loader=ordered_yaml()[0])
    except OSError as err:
        raise ConfigError(yml_path, [f'cannot read the file: {err.strerror}']) from err
    except yaml.YAMLError as err:
        raise ConfigError(yml_path, [f'not valid YAML: {err}']) from err
    if not isinstance(opt, dict):
        raise ConfigError(yml_path, [f'the file holds {type(opt).__name__}, expected a mapping of options'])
    return opt


def parse_value(text):
    """A ``--force_yml`` value, parsed like BasicSR (``~``/none, booleans, ``!!float``, numbers, lists, strings),
    lists read as literals instead of BasicSR's ``eval``."""
    if text == '~' or text.lower() == 'none':
        return None
    if text.lower() in ('true', 'false'):
        return text.lower() == 'true'
    if text.startswith('!!float'):
        return float(text.replace('!!float', ''))
    if text.isdigit():
        return int(text)
    if text.replace('.', '', 1).isdigit() and text.count('.') < 2:
        return float(text)
    if text.startswith('['):
        return ast.literal_eval(text)
    return text


def apply_force_yml(opt, entries, yml_path):
    """Apply ``--force_yml section:key=value`` overrides to ``opt`` (in place; returned).

    A path must exist in the options, or name a key the section's consumer reads when present
    (:func:`~cadyq_plugin.config_check.known_keys`); otherwise it is refused with the closest known name, since it
    would silently change nothing. ``datasets:<name>=~`` removes that dataset.
    """
    problems = []
    for entry in entries or ():
        if '=' not in entry:
            problems.append(f'--force_yml {entry!r}: expected section:key=value')
            continue
        keys, text = (part.strip() for part in entry.split('=', 1))
        path = keys.split(':')
        node = opt
        for depth, key in enumerate(path[:-1]):
            child = node.get(key) if isinstance(node, dict) else None
            if not isinstance(child, dict):
                known = set(node) if isinstance(node, dict) else set()
                problems.append(f'--force_yml {entry!r}: {":".join(path[:depth + 1])} is not a section of the options'
                                + did_you_mean(key, known) + ' (--force_yml cannot create sections)')
                break
            node = child
        else:
            leaf = path[-1]
            if leaf not in node:
                known = known_keys(opt, tuple(path[:-1]))
                if known is not None and leaf not in known:
                    hint = did_you_mean(leaf, set(known) | set(node))
                    if not hint and '.' in leaf:
                        hint = f' (sections are separated by ":", e.g. {leaf.replace(".", ":")})'
                    where = ':'.join(path[:-1]) or 'the top level'
                    problems.append(f'--force_yml {entry!r}: {where} has no key {leaf!r} and none that reads it{hint}')
                    continue
            value = parse_value(text)
            if value is None and path[0] == 'datasets' and len(path) == 2:
                del node[leaf]
            else:
                node[leaf] = value
    if problems:
        raise ConfigError(yml_path, problems)
    return opt


def will_resume(opt, auto_resume, root_path):
    """Whether a training state will be resumed (``--auto_resume`` with a saved state, or
    ``path.resume_state``)."""
    if (opt.get('path') or {}).get('resume_state'):
        return True
    if not auto_resume:
        return False
    state_dir = osp.join(root_path, 'experiments', str(opt.get('name')), 'training_states')
    return osp.isdir(state_dir) and any(name.endswith('.state') for name in os.listdir(state_dir))


def drop_missing_test_sets(opt):
    """Remove the test sets whose data folders do not exist; return ``[(name, missing folder)]``."""
    skipped = []
    for name, dataset in list((opt.get('datasets') or {}).items()):
        if not isinstance(dataset, dict):
            continue
        for key in ('dataroot_gt', 'dataroot_lq'):
            root = dataset.get(key)
            if root is not None and not osp.exists(osp.expanduser(str(root))):
                skipped.append((dataset.get('name', name), root))
                del opt['datasets'][name]
                break
    return skipped


def parse_options(command, argv, root_path):
    """Read, override, check and complete the options of ``basicsr <command> <argv>``; return ``(opt, args)``.

    ``args.skipped`` lists the test sets ``--skip-missing`` removed. The process group is joined only after the
    options passed the check, so a typo never leaves ranks waiting.
    """
    is_train = command == 'train'
    args = command_parser(command).parse_args(argv)
    opt = apply_force_yml(read_yml(args.opt), args.force_yml, args.opt)
    args.skipped = drop_missing_test_sets(opt) if getattr(args, 'skip_missing', False) else []
    if args.skipped and not opt.get('datasets'):
        raise ConfigError(args.opt, ['--skip-missing: no test set has its data: ' +
                                     ', '.join(f'{name} ({root})' for name, root in args.skipped)])
    if args.debug and isinstance(opt.get('name'), str) and not opt['name'].startswith('debug'):
        opt['name'] = 'debug_' + opt['name']
    resuming = is_train and will_resume(opt, args.auto_resume, root_path)
    check_options(opt, args.opt, phase='train' if is_train else 'test', resuming=resuming)
    _distributed(opt, args.launcher)
    _seed(opt)
    opt['auto_resume'] = args.auto_resume
    opt['is_train'] = is_train
    opt['root_path'] = root_path
    _complete(opt, root_path, is_train)
    return opt, args


def _distributed(opt, launcher):
    from cadyq_plugin.distributed import get_dist_info, init_dist
    opt['dist'] = launcher != 'none'
    if opt['dist']:
        init_dist(launcher, num_gpu=opt.get('num_gpu', 'auto'), **(opt.get('dist_params') or {}))
    opt['rank'], opt['world_size'] = get_dist_info()


def _seed(opt):
    """``manual_seed + rank`` on every rank (BasicSR's rule); a missing seed is drawn once and shared."""
    from basicsr.utils import set_random_seed
    from mmengine.dist import broadcast_object_list
    seed = opt.get('manual_seed')
    if seed is None:
        drawn = [random.randint(1, 10000)]
        broadcast_object_list(drawn)
        seed = opt['manual_seed'] = drawn[0]
    set_random_seed(seed + opt['rank'])


def _complete(opt, root_path, is_train):
    """What BasicSR's ``parse_options`` adds: ``num_gpu``, dataset phases and scale, experiment/result paths."""
    if opt.get('num_gpu', 'auto') == 'auto':
        opt['num_gpu'] = torch.cuda.device_count()
    for phase, dataset in opt['datasets'].items():
        dataset['phase'] = phase.split('_')[0]
        if 'scale' in opt:
            dataset['scale'] = opt['scale']
        for key in ('dataroot_gt', 'dataroot_lq'):
            if dataset.get(key) is not None:
                dataset[key] = osp.expanduser(dataset[key])
    opt['path'] = opt.get('path') or {}
    for key, value in opt['path'].items():
        if value is not None and ('resume_state' in key or 'pretrain_network' in key):
            opt['path'][key] = osp.expanduser(value)
    if is_train:
        experiments_root = osp.join(root_path, 'experiments', opt['name'])
        opt['path'].update(experiments_root=experiments_root, models=osp.join(experiments_root, 'models'),
                           training_states=osp.join(experiments_root, 'training_states'), log=experiments_root,
                           visualization=osp.join(experiments_root, 'visualization'))
        if 'debug' in opt['name']:
            if 'val' in opt:
                opt['val']['val_freq'] = 8
            opt['logger']['print_freq'] = 1
            opt['logger']['save_checkpoint_freq'] = 8
    else:
        results_root = osp.join(root_path, 'results', opt['name'])
        opt['path'].update(results_root=results_root, log=results_root,
                           visualization=osp.join(results_root, 'visualization'))
