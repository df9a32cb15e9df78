"""One traced forward pass of a backbone on the ``meta`` device (shapes only, no arithmetic, no side effects on
the real network): what ``CADyQWrapper`` needs to know before it inserts anything.

It finds, at every place an activation quantizer will sit, the channel count (a selector's input size) and the
order in which the places run (= selector order), how often each traced module runs, which quantizer
produces the input of each weight-quantized conv (its ``feed_from``; a quantizer is stood in for by a fresh
tensor, so the data flow is followed by tensor identity), and whether a tensor the quantizers or the
distillation keep is modified in place later in the forward pass (``res += x``).
"""
import copy
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

SiteKey = Tuple[str, str]  # ('input' | 'output', module name)


@dataclass
class Trace:
    """What one forward pass showed. ``error`` is set when the backbone could not run on the meta device."""
    calls: Counter = field(default_factory=Counter)
    channels: Dict[SiteKey, int] = field(default_factory=dict)
    order: List[SiteKey] = field(default_factory=list)
    feeders: Dict[str, Optional[SiteKey]] = field(default_factory=dict)
    features: List[str] = field(default_factory=list)
    not_feature_maps: Dict[Tuple[str, str], str] = field(default_factory=dict)
    modified: List[Tuple[str, str]] = field(default_factory=list)
    error: Optional[str] = None


def _describe(value):
    if torch.is_tensor(value):
        return f'a {value.dim()}-D tensor {tuple(value.shape)}'
    return f'a {type(value).__name__}'


class _Tracer:
    """The hooks of one traced forward. Kept tensors are keyed ``(role, module)``: role ``input`` / ``output``
    (what a quantizer receives), ``quantized input`` / ``quantized output`` (what it returns), ``feature``,
    ``body``."""

    def __init__(self, in_sites, out_sites, convs, features, body):
        self.in_sites, self.out_sites, self.convs, self.features, self.body = (in_sites, out_sites, convs, features,
                                                                            body)
        self.trace = Trace()
        self.produced = {}  # id(tensor) -> the quantizer place that made it
        self.watched = []  # (role key, tensor, version at the time it was kept); keeps every id alive

    def keep(self, key, value):
        """Check that ``value`` is a [B, C, H, W] feature map and remember its version; False if it is not."""
        if not (torch.is_tensor(value) and value.dim() == 4):
            self.trace.not_feature_maps.setdefault(key, _describe(value))
            return False
        self.watched.append((key, value, value._version))
        return True

    def quantize(self, key, x):
        """Stand in for a quantizer: a new tensor (as a quantizer returns one) that records where it came from."""
        if not self.keep(key, x):
            return x
        if key not in self.trace.channels:
            self.trace.channels[key] = x.shape[1]
            self.trace.order.append(key)
        y = x.clone()
        self.produced[id(y)] = key
        self.watched.append((('quantized ' + key[0], key[1]), y, y._version))
        return y

    def pre_hook(self, name):

        def hook(module, args):
            self.trace.calls[name] += 1
            x = args[0] if args else None
            if self.body == ('input', name):
                self.keep(('body', name), x)
            if name in self.in_sites:
                x = self.quantize(('input', name), x)
            if name in self.convs and name not in self.trace.feeders:
                self.trace.feeders[name] = self.produced.get(id(x))
            return (x,) + tuple(args[1:]) if args else None

        return hook

    def post_hook(self, name):

        def hook(module, args, output):
            if name in self.features and self.keep(('feature', name), output):
                self.trace.features.append(name)
            if self.body == ('output', name):
                self.keep(('body', name), output)
            if name in self.out_sites:
                return self.quantize(('output', name), output)
            return None

        return hook


def trace_backbone(backbone, in_sites, out_sites, convs, features, body, size, in_channels=3):
    """Run ``backbone`` on a meta ``[1, in_channels, size, size]`` input with tracing hooks: a meta copy of it, or
    the backbone itself when it was built on the meta device (a throwaway network for checking options).

    Args:
        in_sites, out_sites (set[str]): modules with a quantizer on their input / output.
        convs (set[str]): convs to be weight-quantized.
        features (set[str]): modules whose output is a block feature.
        body (tuple | None): ``('input' | 'output', module)`` of the tail's input.
    """
    on_meta = all(t.is_meta for t in itertools.chain(backbone.parameters(), backbone.buffers()))
    net = (backbone if on_meta else copy.deepcopy(backbone).to('meta')).eval()
    tracer = _Tracer(in_sites, out_sites, convs, features, body)
    traced = set(in_sites) | set(out_sites) | set(convs) | set(features) | ({body[1]} if body else set())
    handles = []
    for name, module in net.named_modules():
        if name in traced:
            handles.append(module.register_forward_pre_hook(tracer.pre_hook(name)))
            handles.append(module.register_forward_hook(tracer.post_hook(name)))
    try:
        with torch.no_grad():
            net(torch.empty(1, in_channels, size, size, device='meta'))
    except Exception as err:  # a user's network may fail in any way on the meta device
        tracer.trace.error = f'{type(err).__name__}: {err}'
    finally:
        for handle in handles:
            handle.remove()
    trace = tracer.trace
    trace.modified = list(dict.fromkeys(key for key, tensor, version in tracer.watched if tensor._version != version))
    return trace
