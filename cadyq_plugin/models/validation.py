"""Validation steps shared by CADyQModel and the patched SRModel (stage 1), single-process or sharded."""
from os import path as osp


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
