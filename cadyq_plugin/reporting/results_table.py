"""Per-image results tables: ``<dataset>_results.csv`` and ``<dataset>_results.md``.

One row per image (PSNR, SSIM, FAB, BitOPs, whichever were measured), optionally a ``target`` row (a bit budget's
target, next to the ``mean`` row that shows what was reached) and a final ``mean`` row, the mean over images
(docs/method.md#fab-and-bitops: a dataset's FAB is the mean of its images' FABs). Files are written atomically.
"""
import csv
import io
import math
import os
import tempfile
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from cadyq_plugin.budget.target import BITOPS_KEY, BUDGET_HR_SIZE

# metric key -> (column header, decimals); the column order of the tables
COLUMNS: Dict[str, Tuple[str, int]] = {
    'psnr': ('PSNR (dB)', 2),
    'ssim': ('SSIM', 4),
    'avg_bit': ('FAB', 2),
    'bitops': ('BitOPs (G)', 2),
    BITOPS_KEY: ('BitOPs {}x{} (G)'.format(*BUDGET_HR_SIZE), 2),
}
NAME_HEADER = 'image'
MEAN_NAME = 'mean'
TARGET_NAME = 'target'
_OTHER_DECIMALS = 4


def results_paths(out_dir: str, dataset_name: str) -> Tuple[str, str]:
    """``(<out_dir>/<dataset_name>_results.csv, <out_dir>/<dataset_name>_results.md)``."""
    base = os.path.join(out_dir, f'{dataset_name}_results')
    return f'{base}.csv', f'{base}.md'


def write_results_table(rows: Sequence[Mapping], out_dir: str, dataset_name: str,
                        metric_names: Optional[Iterable[str]] = None,
                        target: Optional[Mapping[str, float]] = None) -> Tuple[str, str]:
    """Write the per-image CSV and Markdown tables of one dataset; returns ``(csv_path, md_path)``.

    Args:
        rows: One dict per image: ``{'name': img_name, 'psnr': .., 'ssim': .., 'avg_bit': .., 'bitops': ..}``
            with any subset of the metrics (BitOPs in G). A metric missing from a row leaves its cell empty
            and is left out of that column's mean.
        out_dir: Folder of the tables (created if missing).
        dataset_name: File-name prefix.
        metric_names: Metrics to tabulate (e.g. the keys of ``val.metrics``); ``None`` means every metric found
            in the rows. Only metrics present in at least one row get a column. Known metrics come in the order
            PSNR, SSIM, FAB, BitOPs with their fixed headers and decimals; others follow, headed by their key,
            with 4 decimals.
        target: ``{metric key: value}`` of a bit budget, written as a ``target`` row just before the ``mean`` row
            (not part of any mean); keys without a column are left out.
    """
    if not dataset_name or os.sep in dataset_name or (os.altsep and os.altsep in dataset_name):
        raise ValueError(f'dataset_name must be a plain file-name prefix, got {dataset_name!r}')
    rows = list(rows)
    for i, row in enumerate(rows):
        if 'name' not in row:
            raise ValueError(f'row {i} has no "name": {row!r}')
    keys = _columns(rows, metric_names)
    headers = [NAME_HEADER] + [_header(k) for k in keys]
    table = [[str(row['name'])] + [_fmt(row.get(k), k) for k in keys] for row in rows]
    if rows and target:
        table.append([TARGET_NAME] + [_fmt(target.get(k), k) for k in keys])
    if rows:
        table.append([MEAN_NAME] + [_fmt(_mean(row.get(k) for row in rows), k) for k in keys])

    csv_buf = io.StringIO()
    writer = csv.writer(csv_buf, lineterminator='\n')
    writer.writerow(headers)
    writer.writerows(table)

    def md_row(cells):
        return '| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |'

    md = [f'# {dataset_name}', '', md_row(headers), '|' + '|'.join([':---'] + ['---:'] * len(keys)) + '|']
    md += [md_row(cells) for cells in table]

    os.makedirs(out_dir, exist_ok=True)
    csv_path, md_path = results_paths(out_dir, dataset_name)
    _atomic_write(csv_path, csv_buf.getvalue())
    _atomic_write(md_path, '\n'.join(md) + '\n')
    return csv_path, md_path


def read_results_csv(path: str) -> List[Dict]:
    """Read a table written by :func:`write_results_table` back into rows.

    Returns one dict per CSV row, a ``target`` row and the ``mean`` row (last) included:
    ``{'name': .., '<metric key>': float}``; empty cells are left out. Known headers map back to their keys
    (``'PSNR (dB)'`` -> ``'psnr'``, ...).
    """
    key_of = {header: key for key, (header, _) in COLUMNS.items()}
    with open(path, newline='') as f:
        reader = csv.reader(f)
        headers = next(reader)
        if not headers or headers[0] != NAME_HEADER:
            raise ValueError(f'{path} is not a results table (first column {headers[:1]!r}, '
                             f'expected {NAME_HEADER!r})')
        keys = [key_of.get(h, h) for h in headers[1:]]
        rows = []
        for cells in reader:
            row = {'name': cells[0]}
            row.update({k: float(c) for k, c in zip(keys, cells[1:]) if c != ''})
            rows.append(row)
    return rows


def _columns(rows, metric_names) -> List[str]:
    present = {k for row in rows for k, v in row.items() if k != 'name' and v is not None}
    if metric_names is None:
        wanted = sorted(present)
    else:
        wanted = list(dict.fromkeys(metric_names))
        wanted = [k for k in COLUMNS if k in wanted] + [k for k in wanted if k not in COLUMNS]
    return [k for k in wanted if k in present]


def _header(key: str) -> str:
    return COLUMNS[key][0] if key in COLUMNS else key


def _fmt(value, key: str) -> str:
    if value is None:
        return ''
    value = float(value)
    if math.isnan(value):
        return ''
    decimals = COLUMNS[key][1] if key in COLUMNS else _OTHER_DECIMALS
    return f'{value:.{decimals}f}'


def _mean(values) -> Optional[float]:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return math.fsum(vals) / len(vals) if vals else None


def _atomic_write(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp', dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, 'w', newline='') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
