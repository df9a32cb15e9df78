"""``basicsr train``: the training pipeline, composed of BasicSR's building blocks.

It follows ``basicsr.train.train_pipeline`` step by step (options, resume state, experiment folders, loggers,
dataloaders, ``build_model``, the iteration loop with logging, checkpoints and validation) and owns what must
differ for CADyQ and for reliable runs on any machine:

- options read and checked once before any work (:func:`cadyq_plugin.options.parse_options`), then the process
  group (gloo on the CPU, nccl on GPUs, ``dist_params`` honoured) and the numerics policy on CUDA
  (:mod:`cadyq_plugin.determinism`: TF32, cuDNN's algorithm search, deterministic algorithms);
- on CUDA runs the training batches come from pinned memory (``pin_memory`` defaults to true), so the model's
  ``non_blocking`` copies do not make the CPU wait;
- one run per experiment folder (:class:`~cadyq_plugin.experiment.RunLock`), folders made by rank 0 and waited
  for by the others;
- the resume state read on the CPU with ``weights_only=True``, the frozen teacher keeping its path;
- exact resume: the resumable sampler continues the interrupted epoch, every sample's augmentation is seeded by
  (seed, epoch, position) for any dataset, the generator states come back from the training state;
- epochs counted from the batches the loader really yields (BasicSR's count ignores ``drop_last`` and could stop
  a run early);
- SIGTERM/SIGINT: the current iteration finishes, the network and training state are saved, the run exits with
  128 + the signal number, and ``--auto_resume`` continues from exactly there.
"""
import datetime
import math
import time
from os import path as osp

from basicsr.data import build_dataloader, build_dataset
from basicsr.data.prefetch_dataloader import CPUPrefetcher, CUDAPrefetcher
from basicsr.models import build_model
from basicsr.train import init_tb_loggers
from basicsr.utils import AvgTimer, MessageLogger, get_env_info, get_time_str, make_exp_dirs, mkdir_and_rename
from basicsr.utils.dist_util import master_only
from basicsr.utils.options import dict2str

from cadyq_plugin.determinism import apply_determinism, describe
from cadyq_plugin.distributed import barrier, uses_cuda
from cadyq_plugin.experiment import (ExperimentError, GracefulStop, WorkerInit, acquire_on_rank0, command_line,
                                     guarded_setup, run_logger)
from cadyq_plugin.options import parse_options
from cadyq_plugin.resume import ResumableSampler, SeededDataset, load_resume_state, resume_sampler


class RunStopped(Exception):
    """Training stopped by a signal after saving; ``exit_code`` is 128 + the signal number (the shell's way)."""

    def __init__(self, message, exit_code):
        super().__init__(message)
        self.exit_code = exit_code


def train_pipeline(root_path, argv):
    """Run ``basicsr train <argv>`` with ``root_path`` as the root of ``experiments/`` and ``tb_logger/``."""
    opt, args = parse_options('train', argv, root_path)
    policy = apply_determinism(opt.get('determinism'))
    lock = guarded_setup(lambda: acquire_on_rank0(opt['path']['experiments_root'], command_line('train', argv)),
                          opt['path']['experiments_root'])
    try:
        _train(opt, args, command_line('train', argv), policy)
    finally:
        lock.release()


def _train(opt, args, command, policy):
    resume_state = load_resume_state(opt)
    guarded_setup(lambda: _make_folders(opt, resume_state is not None, args.opt, command),
                   opt['path']['experiments_root'])
    barrier()  # no rank writes into a folder that rank 0 is still archiving or creating
    log_file = osp.join(opt['path']['log'], f"train_{opt['name']}_{get_time_str()}.log")
    logger = run_logger(log_file)
    logger.info(get_env_info())
    logger.info(dict2str(opt))
    logger.info(describe(policy))
    tb_logger = init_tb_loggers(opt)

    train_loader, train_sampler, val_loaders, total_epochs, total_iters = create_train_val_dataloader(
        opt, logger, resume_state)
    model = build_model(opt)
    start_epoch = current_iter = 0
    if resume_state:
        model.resume_training(resume_state)
        start_epoch, current_iter = resume_state['epoch'], resume_state['iter']
        logger.info(f'Resuming training from epoch: {start_epoch}, iter: {current_iter}.')
    msg_logger = MessageLogger(opt, current_iter, tb_logger)
    prefetcher = make_prefetcher(train_loader, opt, logger)

    logger.info(f'Start training from epoch: {start_epoch}, iter: {current_iter}')
    data_timer, iter_timer = AvgTimer(), AvgTimer()
    start_time = time.time()
    last_saved = current_iter
    with GracefulStop() as stop:
        for epoch in range(start_epoch, total_epochs + 1):
            train_sampler.set_epoch(epoch)
            prefetcher.reset()
            train_data = prefetcher.next()
            while train_data is not None:
                data_timer.record()
                current_iter += 1
                if current_iter > total_iters:
                    break
                model.update_learning_rate(current_iter, warmup_iter=opt['train'].get('warmup_iter', -1))
                model.feed_data(train_data)
                model.optimize_parameters(current_iter)
                iter_timer.record()
                if current_iter == 1:
                    msg_logger.reset_start_time()  # a more accurate ETA (not in resumed runs)
                if current_iter % opt['logger']['print_freq'] == 0:
                    log_vars = {'epoch': epoch, 'iter': current_iter, 'lrs': model.get_current_learning_rate(),
                                'time': iter_timer.get_avg_time(), 'data_time': data_timer.get_avg_time()}
                    log_vars.update(model.get_current_log())
                    msg_logger(log_vars)
                if current_iter % opt['logger']['save_checkpoint_freq'] == 0:
                    logger.info('Saving models and training states.')
                    model.save(epoch, current_iter)
                    last_saved = current_iter
                if opt.get('val') is not None and current_iter % opt['val']['val_freq'] == 0:
                    for val_loader in val_loaders:
                        model.validation(val_loader, current_iter, tb_logger, opt['val']['save_img'])
                if stop.requested():  # before the next batch: the workers may be gone after Ctrl-C
                    _save_and_stop(model, stop, epoch, current_iter, last_saved, opt, logger, tb_logger)
                data_timer.start()
                iter_timer.start()
                train_data = prefetcher.next()

    consumed_time = str(datetime.timedelta(seconds=int(time.time() - start_time)))
    logger.info(f'End of training. Time consumed: {consumed_time}')
    logger.info('Save the latest model.')
    model.save(epoch=-1, current_iter=-1)  # -1 stands for the latest
    if opt.get('val') is not None:
        for val_loader in val_loaders:
            model.validation(val_loader, current_iter, tb_logger, opt['val']['save_img'])
    if tb_logger:
        tb_logger.close()


def _make_folders(opt, resuming, yml_path, command):
    if not resuming:
        make_exp_dirs(opt)
        if opt['logger'].get('use_tb_logger') and 'debug' not in opt['name'] and opt['rank'] == 0:
            mkdir_and_rename(osp.join(opt['root_path'], 'tb_logger', opt['name']))
    copy_opt_file(yml_path, opt['path']['experiments_root'], command)


@master_only
def copy_opt_file(yml_path, folder, command):
    """The options file as run, into the experiment folder, headed by the time and the command."""
    with open(yml_path) as f:
        text = f.read()
    with open(osp.join(folder, osp.basename(yml_path)), 'w') as f:
        f.write(f'# GENERATE TIME: {time.asctime()}\n# CMD:\n# {command}\n\n{text}')


def _save_and_stop(model, stop, epoch, current_iter, last_saved, opt, logger, tb_logger):
    if current_iter > last_saved:
        model.save(epoch, current_iter)
        where = osp.join(opt['path']['training_states'], f'{current_iter}.state')
        message = (f'{stop.name} received: saved the network and training state of iteration {current_iter} '
                   f'({where}); continue with --auto_resume')
    else:
        message = f'{stop.name} received: iteration {current_iter} is saved already; continue with --auto_resume'
    logger.warning(message)
    if tb_logger:
        tb_logger.close()
    raise RunStopped(message, 128 + stop.signum)


def create_train_val_dataloader(opt, logger, resume_state=None):
    """BasicSR's loaders with the plugin's training sampler and per-sample seeding (any dataset type).

    Returns ``(train_loader, train_sampler, val_loaders, total_epochs, total_iters)`` as BasicSR's does.
    """
    train_loader = train_sampler = None
    val_loaders = []
    for phase, dataset_opt in opt['datasets'].items():
        if phase == 'train':
            if uses_cuda(opt['num_gpu']):
                dataset_opt.setdefault('pin_memory', True)  # the model copies batches with non_blocking
            ratio = dataset_opt.get('dataset_enlarge_ratio', 1)
            train_set = SeededDataset(build_dataset(dataset_opt))
            train_sampler = ResumableSampler(train_set, opt['world_size'], opt['rank'], ratio, opt['manual_seed'])
            train_loader = build_dataloader(train_set, dataset_opt, num_gpu=opt['num_gpu'], dist=opt['dist'],
                                            sampler=train_sampler, seed=opt['manual_seed'])
            train_loader.worker_init_fn = WorkerInit(train_loader.worker_init_fn)
            if len(train_loader) == 0:
                raise ExperimentError(f'datasets.train: {len(train_set)} samples (x{ratio}) over {opt["world_size"]} '
                                      f'process(es) make no full batch of batch_size_per_gpu '
                                      f'{dataset_opt["batch_size_per_gpu"]}')
            total_iters = int(opt['train']['total_iter'])
            total_epochs = math.ceil(total_iters / len(train_loader))
            logger.info('Training statistics:'
                        f'\n\tNumber of train images: {len(train_set)}'
                        f'\n\tDataset enlarge ratio: {ratio}'
                        f'\n\tBatch size per gpu: {dataset_opt["batch_size_per_gpu"]}'
                        f'\n\tWorld size (gpu number): {opt["world_size"]}'
                        f'\n\tRequire iter number per epoch: {len(train_loader)}'
                        f'\n\tTotal epochs: {total_epochs}; iters: {total_iters}.')
            if resume_state is not None:
                resume_sampler(train_sampler, train_loader, resume_state, logger)
        elif phase.split('_')[0] == 'val':
            val_set = build_dataset(dataset_opt)
            val_loaders.append(build_dataloader(val_set, dataset_opt, num_gpu=opt['num_gpu'], dist=opt['dist'],
                                                sampler=None, seed=opt['manual_seed']))
            logger.info(f'Number of val images/folders in {dataset_opt["name"]}: {len(val_set)}')
    return train_loader, train_sampler, val_loaders, total_epochs, total_iters


def make_prefetcher(train_loader, opt, logger):
    prefetch_mode = opt['datasets']['train'].get('prefetch_mode')
    if prefetch_mode in (None, 'cpu'):
        return CPUPrefetcher(train_loader)
    if opt['datasets']['train'].get('pin_memory') is not True:
        raise ExperimentError('datasets.train.prefetch_mode cuda needs datasets.train.pin_memory: true')
    logger.info(f'Use {prefetch_mode} prefetch dataloader')
    return CUDAPrefetcher(train_loader, opt)

