"""Validation shared by the plugin's models: per-image rows averaged in image order, single-process or sharded.

**Sharded validation** (:func:`dist_validation`): each rank evaluates a disjoint strided share of the images on
the bare network (never through the DDP wrapper, whose forward broadcasts buffers and would mis-pair the
collectives of the other ranks), ``mmengine.dist.collect_results`` gathers the per-image rows back into dataset
order and rank 0 averages, keeps the best-metric records and logs: the numbers are those of single-process
validation, for any number of images. An error on one rank is raised on every rank instead of leaving the
others waiting.
"""
from os import path as osp

from mmengine.dist import all_gather_object, collect_results, get_dist_info
from torch.utils.data import DataLoader, Subset

from cadyq_plugin.distributed import broadcast_buffers, unsynced_parameters


def visualization_path(opt, dataset_name, img_name, current_iter):
    """Where BasicSR saves a validation/test SR image (its own naming)."""
    if opt['is_train']:
        return osp.join(opt['path']['visualization'], img_name, f'{img_name}_{current_iter}.png')
    suffix = opt['val'].get('suffix') or opt['name']
    return osp.join(opt['path']['visualization'], dataset_name, f'{img_name}_{suffix}.png')


def average_rows(model, dataset_name, rows, current_iter, tb_logger):
    """Mean of each metric over the per-image rows (summed in image order), best-metric records and logging.

    Returns False when there is nothing to report (no metrics configured or no rows)."""
    metrics_opt = model.opt['val'].get('metrics') or {}
    if not metrics_opt or not rows:
        return False
    model._initialize_best_metric_results(dataset_name)
    model.metric_results = {}
    for name in metrics_opt:
        total = 0
        for row in rows:
            total += row[name]
        model.metric_results[name] = total / len(rows)
        model._update_best_metric_result(dataset_name, name, model.metric_results[name], current_iter)
    model._log_validation_metric_values(current_iter, dataset_name, tb_logger)
    return True


def shard_indices(num_items, rank, world_size):
    """Rank ``rank``'s share of ``range(num_items)``: every ``world_size``-th item, disjoint, no padding (the order
    ``mmengine.dist.collect_results`` interleaves back into dataset order)."""
    return list(range(rank, num_items, world_size))


def shard_dataloader(dataloader, rank, world_size):
    """A batch-1 loader over this rank's share of ``dataloader.dataset``."""
    return DataLoader(
        Subset(dataloader.dataset, shard_indices(len(dataloader.dataset), rank, world_size)),
        batch_size=1,
        shuffle=False,
        num_workers=getattr(dataloader, 'num_workers', 0),
        collate_fn=dataloader.collate_fn,
        pin_memory=getattr(dataloader, 'pin_memory', False))


def raise_if_any_rank_failed(error):
    """All-gather each rank's error message (or None); every rank raises if any rank failed (no hang)."""
    failed = [(rank, msg) for rank, msg in enumerate(all_gather_object(error)) if msg is not None]
    if failed:
        listing = '; '.join(f'rank {rank}: {msg}' for rank, msg in failed)
        raise RuntimeError(f'distributed validation failed on {len(failed)} rank(s): {listing}')


def dist_validation(model, dataloader, current_iter, tb_logger, save_img):
    """Sharded validation of ``model`` (see the module doc); rank 0 finishes on the rows of every image.

    ``model`` provides ``evaluate_images(samples, dataset_name, current_iter, save_img) -> rows`` and
    ``finish_validation(dataset_name, rows, current_iter, tb_logger)``.
    """
    from basicsr.utils import get_root_logger
    rank, world_size = get_dist_info()
    dataset_name = dataloader.dataset.opt['name']
    net = model.get_bare_model(model.net_g)
    broadcast_buffers(net)  # evaluate rank 0's model, the one it saves
    drifted = unsynced_parameters(net)
    if drifted and rank == 0:
        get_root_logger().warning(f'{len(drifted)} parameters differ between ranks (first: {drifted[:5]}); '
                                  'validating each rank\'s own copy')
    rows, error = [], None
    try:
        rows = model.evaluate_images(shard_dataloader(dataloader, rank, world_size), dataset_name, current_iter,
                                     save_img)
    except Exception as err:  # reported on every rank below instead of leaving the others waiting
        error = f'{type(err).__name__}: {err}'
    raise_if_any_rank_failed(error)
    # device='gpu' is mmengine's all_gather_object path; it runs on the process group's device (gloo: CPU)
    rows = collect_results(rows, len(dataloader.dataset), device='gpu')
    if rank == 0:
        model.finish_validation(dataset_name, rows, current_iter, tb_logger)
