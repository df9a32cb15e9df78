"""Instrumented CADyQ training: what the bit selectors see, choose and learn, per window of iterations.

Runs a CADyQ training options file in this process for ``--iters`` iterations (the model's own step on the
training set of the file) with forward hooks on every selector, and prints per window:

- ``FAB``: the training batches' FAB; ``weight`` (the bit loss's weight, with the reference loss) or ``price`` (a
  budget's price, logits per bit);
- ``|input|``: the median L1 norm of the selectors' input ``concat(image feature, layer std)``;
- ``bit/rest``: the size of the bit loss's gradient on the selectors' logits against that of the other losses;
- ``step``: the median change of the 8-vs-4-bit logit margin ``z_8 - z_4`` per iteration, in units of the
  selectors' learning rate (Adam moves each parameter by about ``lr`` per step, whatever the loss's scale);
- ``rho(step)``: Spearman's rho, over the batch samples of the window, of that change against the sample's image
  gradient (negative: the step lowers the bits of detailed patches most);
- ``rho(FAB)``: Spearman's rho of each sample's FAB (mean over selectors) against its image gradient, the batch
  mean removed (the content relation inside the batches);
- ``bit dir`` / ``rest dir``: the same rho for the direction a plain gradient step of the bit loss alone, and of
  the other losses alone, would move ``z_8 - z_4`` (from the per-sample logit gradients and the inputs).

The bit loss's logit gradient is computed in closed form (``w * p_k (b_k - E_p[b]) / E_p[b]`` per selector and
sample, reduction ``sum``); the rest is the distortion losses' gradient reaching the selector's output, taken
through the mixture and the softmax as the selector's backward does.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

from cadyq_plugin.quant.act_quant import mixture_gradients
from cadyq_plugin.quant.bit_selector import layer_std

SMALL_BITS, LARGE_BITS = 0, -1  # candidate columns of z_8 - z_4 (the smallest and the largest candidate)


def _ranks(x):
    return x.argsort().argsort().float()


def spearman(x, y):
    """Spearman's rho of two 1-D tensors (no ties expected)."""
    if x.numel() < 3:
        return float('nan')
    return float(torch.corrcoef(torch.stack([_ranks(x), _ranks(y)]))[0, 1])


class SelectorTap:
    """Forward hooks on every selector: its linear layer's input and logits (recomputed from the selector's input and
    the image feature, as the selector computes them), and the other losses' gradient on the logits (the mixture's
    gradient of the selector's output, through the softmax)."""

    def __init__(self, selectors):
        self.selectors = selectors
        self.records = {}
        self.handles = [s.register_forward_hook(self._hook(i)) for i, s in enumerate(selectors)]

    def _hook(self, index):
        def hook(selector, args, y):
            x, bit_record = args[0].detach(), args[1]
            with torch.no_grad():
                inputs = torch.cat([bit_record.image_feature, layer_std(x)], dim=1).detach()
                logits = F.linear(inputs, selector.fc.weight, selector.fc.bias)
            record = {'input': inputs, 'logits': logits, 'rest': None}
            self.records[index] = record
            if y.requires_grad:
                probs = torch.softmax(logits, dim=1)
                alphas = torch.cat([q.alpha.detach() for q in selector.quantizers])
                clip = not (selector.training and selector.calibrating)

                def distortion_gradient(grad_y):
                    _, _, grad_probs = mixture_gradients(grad_y, x, alphas, selector.levels, probs, None, clip)
                    record['rest'] = torch.ops.aten._softmax_backward_data(grad_probs, probs, 1, probs.dtype)
                y.register_hook(distortion_gradient)
        return hook

    def close(self):
        for handle in self.handles:
            handle.remove()


def bit_loss_logit_grad(logits, bits, weight):
    """``d(weight * b / E_p[b].detach()) / d logits`` per sample: the reference bit loss's gradient on one selector's
    logits (``b`` carries the gradient of ``E_p[b]``)."""
    probs = torch.softmax(logits, dim=1)
    expected = probs @ bits
    return weight * probs * (bits - expected[:, None]) / expected[:, None]


def iteration_record(tap, parameters_before, weight):
    """One iteration's numbers per selector: inputs, logits, logit gradients (bit loss, rest), logit change."""
    out = []
    for index, selector in enumerate(tap.selectors):
        record = tap.records[index]
        inputs, logits = record['input'], record['logits']
        bit = (bit_loss_logit_grad(logits, selector.bit_values, weight) if weight
               else torch.zeros_like(logits))
        weight_before, bias_before = parameters_before[index]
        change = inputs @ (selector.fc.weight.detach() - weight_before).t() + selector.fc.bias.detach() - bias_before
        out.append({'input': inputs, 'bits': selector.bit_values[logits.argmax(dim=1)], 'bit': bit,
                    'rest': record['rest'], 'change': change})
    return out


def window_row(window, lr):
    """The printed numbers of a window of iteration records (see the module doc)."""
    norms, ratios, steps, gradient, step_change, fab_gradient, fab_centered = [], [], [], [], [], [], []
    directions = {'bit': [], 'rest': []}
    for it in window:
        image = it['selectors'][0]['input'][:, :2].sum(dim=1)
        fab = torch.zeros_like(image)
        for s in it['selectors']:
            norms.append(s['input'].abs().sum(dim=1).median())
            margin = s['change'][:, LARGE_BITS] - s['change'][:, SMALL_BITS]
            steps.append(margin.abs().mean() / lr)
            gradient.append(image)
            step_change.append(margin - margin.mean())
            fab += s['bits']
            if s['rest'] is not None:
                ratios.append(s['bit'].abs().mean() / (s['rest'].abs().mean() + 1e-30))
                kernel = s['input'] @ s['input'].t() + 1  # how sample i's logit gradient moves sample j's logits
                for part in directions:
                    moved = -(kernel @ s[part])
                    diff = moved[:, LARGE_BITS] - moved[:, SMALL_BITS]
                    directions[part].append((image, diff - diff.mean()))
        fab /= len(it['selectors'])
        fab_gradient.append(image)
        fab_centered.append(fab - fab.mean())

    def median(values):
        return float(torch.stack(values).median()) if values else float('nan')

    def rho(pairs):
        return spearman(torch.cat([x for x, _ in pairs]), torch.cat([y for _, y in pairs])) if pairs else float('nan')

    last = window[-1]
    return {'iter': last['iter'], 'fab': sum(it['fab'] for it in window) / len(window),
            'control': last['control'], 'input': median(norms), 'bit/rest': median(ratios), 'step': median(steps),
            'rho_step': rho(list(zip(gradient, step_change))), 'rho_fab': rho(list(zip(fab_gradient, fab_centered))),
            'bit_dir': rho(directions['bit']), 'rest_dir': rho(directions['rest'])}


def format_rows(rows, control):
    lines = [f'| iter | FAB | {control} | input | bit/rest | step | rho(step) | rho(FAB) | bit dir | rest dir |',
             '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for r in rows:
        lines.append(f'| {r["iter"]} | {r["fab"]:.2f} | {r["control"]:.3g} | {r["input"]:.3g} | {r["bit/rest"]:.2f} | '
                     f'{r["step"]:.3g} | {r["rho_step"]:+.2f} | {r["rho_fab"]:+.2f} | {r["bit_dir"]:+.2f} | '
                     f'{r["rest_dir"]:+.2f} |')
    return '\n'.join(lines)


def probe(opt_path, iters, window, force_yml=(), root=None):
    """Train ``opt_path`` (a CADyQ stage) for ``iters`` iterations under the tap; one row per ``window``."""
    import cadyq_plugin  # noqa: F401
    from basicsr.data import build_dataset
    from basicsr.models import build_model

    from cadyq_plugin.options import parse_options
    from cadyq_plugin.quant import BitSelector
    argv = ['-opt', opt_path] + (['--force_yml', *force_yml] if force_yml else [])
    opt, _ = parse_options('train', argv, root or os.getcwd())
    model = build_model(opt)
    net = model.get_bare_model(model.net_g)
    selectors = sorted((m for m in net.modules() if isinstance(m, BitSelector)), key=lambda m: m.index)
    lr = model.optimizer_s.param_groups[0]['lr']
    dataset_opt = opt['datasets']['train']
    loader = torch.utils.data.DataLoader(build_dataset(dataset_opt), batch_size=dataset_opt['batch_size_per_gpu'],
                                         shuffle=True, drop_last=True,
                                         generator=torch.Generator().manual_seed(opt['manual_seed']))
    tap = SelectorTap(selectors)
    rows, pending, it = [], [], 0
    while it < iters:
        for batch in loader:
            it += 1
            if it > iters:
                break
            model.update_learning_rate(it, warmup_iter=-1)
            model.feed_data(batch)
            before = [(s.fc.weight.detach().clone(), s.fc.bias.detach().clone()) for s in selectors]
            weight = 0.0 if model.bit_budget is not None or model.cri_bit is None else model.cri_bit.weight(it)
            model.optimize_parameters(it)
            control = model.log_dict.get('bit_price', weight)
            pending.append({'iter': it, 'fab': float(model.log_dict['avg_bit']), 'control': float(control),
                            'selectors': iteration_record(tap, before, weight)})
            if len(pending) == window:
                rows.append(window_row(pending, lr))
                print(format_rows(rows[-1:], 'price' if model.bit_budget is not None else 'weight').splitlines()[-1],
                      flush=True)
                pending = []
    tap.close()
    return rows, 'price' if model.bit_budget is not None else 'weight'


def build_parser():
    parser = argparse.ArgumentParser(prog='basicsr selector-probe', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-opt', required=True, help='a CADyQ training options file (stage 3)')
    parser.add_argument('--iters', type=int, default=300)
    parser.add_argument('--window', type=int, default=25, help='iterations per printed row')
    parser.add_argument('--force_yml', nargs='+', default=[], help='options changes, as basicsr train takes them')
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    rows, control = probe(args.opt, args.iters, args.window, args.force_yml)
    print(format_rows(rows, control))
    return 0


if __name__ == '__main__':
    sys.exit(main())
