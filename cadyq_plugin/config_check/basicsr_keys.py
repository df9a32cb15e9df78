"""The option keys BasicSR 1.4.2 reads when present, by section, beyond what an options file usually holds: its
options parser, train pipeline, models (the plugin's extend SRModel), datasets and dataloader builder. BasicSR
declares none of them, so they are written down here, for the options check and ``--force_yml``."""

OPTION_KEYS = {
    '': ('name', 'model_type', 'scale', 'num_gpu', 'manual_seed', 'datasets', 'path', 'train', 'val', 'logger',
         'dist_params', 'find_unused_parameters', 'is_train', 'dist', 'rank', 'world_size', 'auto_resume',
         'root_path', 'network_g',
         # the RealESRGAN/RealESRNet models read their degradation settings at the top level
         'high_order_degradation', 'l1_gt_usm', 'percep_gt_usm', 'gan_gt_usm', 'gt_usm', 'queue_size', 'gt_size',
         'resize_prob', 'resize_range', 'gaussian_noise_prob', 'noise_range', 'poisson_scale_range',
         'gray_noise_prob', 'jpeg_range', 'second_blur_prob', 'resize_prob2', 'resize_range2',
         'gaussian_noise_prob2', 'noise_range2', 'poisson_scale_range2', 'gray_noise_prob2', 'jpeg_range2'),
    'train': ('optim_g', 'scheduler', 'total_iter', 'warmup_iter', 'pixel_opt', 'perceptual_opt', 'ema_decay',
              # GAN, StyleGAN and video models
              'optim_d', 'gan_opt', 'ldl_opt', 'feature_matching_opt', 'net_d_iters', 'net_d_init_iters',
              'r1_reg_weight', 'path_reg_weight', 'net_g_reg_every', 'net_d_reg_every', 'mixing_prob', 'lr_flow',
              'fix_flow', 'flow_lr_mul', 'dcn_lr_mul', 'tsa_iter'),
    'val': ('val_freq', 'save_img', 'suffix', 'metrics', 'pbar', 'grids', 'crop_size', 'flip_seq',
            'center_frame_only', 'num_val_samples'),
    'logger': ('print_freq', 'save_checkpoint_freq', 'use_tb_logger', 'wandb'),
}
PATH_KEYS = ('resume_state', 'ignore_resume_networks', 'experiments_root', 'models', 'training_states', 'log',
             'visualization', 'results_root')
PATH_PREFIXES = ('pretrain_network_', 'strict_load_', 'param_key_')  # followed by a network's name: g, t, d, ...
LOADER_KEYS = ('name', 'type', 'phase', 'scale', 'num_worker_per_gpu', 'batch_size_per_gpu', 'dataset_enlarge_ratio',
               'prefetch_mode', 'pin_memory', 'persistent_workers', 'num_prefetch_queue')
PAIRED_DATASET_KEYS = LOADER_KEYS + ('dataroot_gt', 'dataroot_lq', 'meta_info_file', 'filename_tmpl', 'io_backend',
                                     'gt_size', 'use_hflip', 'use_rot', 'color', 'mean', 'std')
PAIRED_TRAIN_REQUIRED = ('gt_size', 'use_hflip', 'use_rot', 'batch_size_per_gpu', 'num_worker_per_gpu')
IO_BACKENDS = ('disk', 'lmdb', 'memcached')
SCHEDULERS = ('MultiStepLR', 'MultiStepRestartLR', 'CosineAnnealingRestartLR')
