"""``basicsr test``: the test pipeline, composed of BasicSR's building blocks (``basicsr.test.test_pipeline``
step by step), with the options read and checked once, one run per results folder, a barrier after the folders
are made, ``--skip-missing`` for test sets whose data is not there, and the options' numerics policy on CUDA
(:mod:`cadyq_plugin.determinism`)."""
from os import path as osp

from basicsr.data import build_dataloader, build_dataset
from basicsr.models import build_model
from basicsr.utils import get_env_info, get_time_str, make_exp_dirs
from basicsr.utils.options import dict2str

from cadyq_plugin.determinism import apply_determinism, describe
from cadyq_plugin.distributed import barrier
from cadyq_plugin.experiment import acquire_on_rank0, command_line, guarded_setup, run_logger
from cadyq_plugin.options import parse_options


def test_pipeline(root_path, argv):
    """Run ``basicsr test <argv>`` with ``root_path`` as the root of ``results/``."""
    opt, args = parse_options('test', argv, root_path)
    policy = apply_determinism(opt.get('determinism'))
    results_root = opt['path']['results_root']
    lock = guarded_setup(lambda: acquire_on_rank0(results_root, command_line('test', argv)), results_root)
    try:
        guarded_setup(lambda: make_exp_dirs(opt), results_root)
        barrier()
        log_file = osp.join(opt['path']['log'], f"test_{opt['name']}_{get_time_str()}.log")
        logger = run_logger(log_file)
        logger.info(get_env_info())
        logger.info(dict2str(opt))
        logger.info(describe(policy))
        for name, root in args.skipped:
            logger.warning(f'--skip-missing: test set {name} skipped, {root} does not exist')
        test_loaders = []
        for _, dataset_opt in sorted(opt['datasets'].items()):
            test_set = build_dataset(dataset_opt)
            test_loaders.append(build_dataloader(test_set, dataset_opt, num_gpu=opt['num_gpu'], dist=opt['dist'],
                                                 sampler=None, seed=opt['manual_seed']))
            logger.info(f"Number of test images in {dataset_opt['name']}: {len(test_set)}")
        model = build_model(opt)
        for test_loader in test_loaders:
            logger.info(f"Testing {test_loader.dataset.opt['name']}...")
            model.validation(test_loader, current_iter=opt['name'], tb_logger=None, save_img=opt['val']['save_img'])
    finally:
        lock.release()
