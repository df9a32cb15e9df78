"""Where a bit budget is reported: one line of the validation log, TensorBoard, and the results tables.

The budget of a run is ``train.bit_opt.target_fab`` / ``target_bitops`` in training and ``val.target_fab`` /
``val.target_bitops`` in a test options file (the budget the tested network was trained to). What is reached is
computed from the chosen bits of the validation images, whichever metrics ``val.metrics`` lists: the FAB
(:func:`calculate_avg_bit`) and the BitOPs at 1280x720 (each selector at its mean bit over the image's forward
passes; the BitOPs metric itself counts the images' own sizes, which a target at 1280x720 cannot be compared with).
"""
from basicsr.utils import get_root_logger

from cadyq_plugin.metrics import calculate_avg_bit
from cadyq_plugin.budget.target import BITOPS_KEY, BUDGET_HR_SIZE


def image_fab(bits):
    """FAB of one image from its ``[n_forwards, n_selectors]`` bits (the ``avg_bit`` metric)."""
    return calculate_avg_bit([{'bits': b} for b in bits])


def _metric_name(metrics_opt, metric_type):
    return next((name for name, metric in metrics_opt.items() if metric.get('type') == metric_type), None)


class BudgetReport:
    """Reports one :class:`~cadyq_plugin.budget.target.BitBudget` for validation rows (one per image, with
    ``bits``).

    ``key`` is the results column of the budget's measure: the FAB metric's name (``avg_bit`` if none is
    configured) or :data:`BITOPS_KEY`; TensorBoard gets ``metrics/<dataset>/<key>_target`` next to
    ``metrics/<dataset>/<key>``.
    """

    def __init__(self, budget, metrics_opt):
        self.budget = budget
        self.metrics_opt = metrics_opt or {}
        fab_key = _metric_name(self.metrics_opt, 'calculate_avg_bit') or 'avg_bit'
        self.key = fab_key if budget.kind == 'fab' else BITOPS_KEY

    def annotate(self, rows):
        """Each row gets its image's value of the budget's measure under :attr:`key`."""
        for row in rows:
            row[self.key] = image_fab(row['bits']) if self.budget.kind == 'fab' else self.budget.bitops_of(row['bits'])

    def table_target(self):
        """The ``target`` row of the results tables."""
        return {self.key: self.budget.target}

    def log(self, dataset_name, rows, metric_results, current_iter, tb_logger):
        """The budget line of the validation log (target, FAB and BitOPs reached, PSNR) and TensorBoard."""
        fab = sum(image_fab(row['bits']) for row in rows) / len(rows)
        bitops = sum(self.budget.bitops_of(row['bits']) for row in rows) / len(rows)
        size = '{}x{}'.format(*BUDGET_HR_SIZE)
        target = self.budget.target
        if self.budget.kind == 'fab':
            reached = fab
            line = (f'target_fab {target:.2f} | reached FAB {fab:.2f} ({fab - target:+.2f}), BitOPs {bitops:.2f} G '
                    f'at {size}')
        else:
            reached = bitops
            line = (f'target_bitops {target:.2f} G at {size} | reached BitOPs {bitops:.2f} G ({bitops - target:+.2f}), '
                    f'FAB {fab:.2f}')
        psnr = _metric_name(self.metrics_opt, 'calculate_psnr')
        if psnr in metric_results:
            line += f' | {psnr} {metric_results[psnr]:.4f}'
        get_root_logger().info(f'Bit budget on {dataset_name}: {line}')
        if tb_logger is not None:
            tb_logger.add_scalar(f'metrics/{dataset_name}/{self.key}_target', target, current_iter)
            if self.key not in metric_results:
                tb_logger.add_scalar(f'metrics/{dataset_name}/{self.key}', reached, current_iter)
