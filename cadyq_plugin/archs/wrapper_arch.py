"""CADyQ on any BasicSR network, by configuration: ``network_g: {type: CADyQWrapper, backbone: {type: RCAN, ...}}``.

The wrapper builds the backbone from BasicSR's ARCH_REGISTRY and changes it in place: the chosen convs become
weight-quantized :class:`QConv2d` (same parameter objects, same names), activation quantizers (bit selectors in
cadyq mode, fixed PAMS quantizers in pams mode) run in forward hooks at module inputs and outputs, and other
hooks collect the block features and the body output. Everything else is the backbone's own forward pass, so
its state dict is the backbone's plus the quantizer entries: a checkpoint of the bare backbone (trained in
stage 1, or a BasicSR release) loads as the FP stage and as a teacher, and the stages load into each other
like the hand-written ``<Backbone>_CADyQ`` archs.

Under ``torch.nn.DataParallel`` each replica runs its own modules: ``torch.nn.parallel.replicate`` copies only
modules, parameters and buffers, so a replica builds, once, its own view of the backbone (its replicated tables)
and its own forward state, and points the hooks of its replicated modules at its own quantizers.
"""
import copy
import inspect
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY

from cadyq_plugin.archs.cadyq_net import CADyQNet
from cadyq_plugin.archs.module_patterns import similar_names
from cadyq_plugin.archs.wrapper_hooks import ForwardState, InputHook, OutputHook
from cadyq_plugin.archs.wrapper_placement import Placement, resolve_placement, trace_problems
from cadyq_plugin.archs.wrapper_presets import PRESETS, default_patterns
from cadyq_plugin.archs.wrapper_trace import Trace, trace_backbone
from cadyq_plugin.errors import UserError
from cadyq_plugin.quant import BitSelector, QConv2d, set_backend
from cadyq_plugin.quant.fp_layers import fp_convs
from cadyq_plugin.quant.int8 import BACKENDS

TRACE_SIZE = 16  # LR side of the traced forward pass (rounded up to a multiple of pad_to)
_TABLES = ('_modules', '_parameters', '_buffers', '_non_persistent_buffers_set')


class WrapperConfigError(UserError, ValueError):
    """Options of :class:`CADyQWrapper` that cannot work; ``problems`` holds one line per problem, each naming the
    option (``quantize[1] = 'body.*.conv9': ...``); ``upscale`` is the scale when it could be determined."""

    def __init__(self, problems, upscale=None):
        self.problems = list(problems)
        self.upscale = upscale
        count = len(self.problems)
        super().__init__(f'CADyQWrapper options have {count} problem{"s" if count > 1 else ""}:\n  ' +
                         '\n  '.join(self.problems))


def build_backbone(backbone, device=None):
    """The backbone (an instance of a registered, non-CADyQ arch) and its class, from its options section; built
    on ``device`` if its constructor can be (``meta`` fails for constructors that read tensor values)."""
    import basicsr.archs  # noqa: F401  (fills ARCH_REGISTRY with BasicSR's archs)
    if not isinstance(backbone, dict) or not isinstance(backbone.get('type'), str):
        raise WrapperConfigError([f'backbone = {backbone!r}: expected a section with the type of a registered arch '
                                  'and its arguments, e.g. {type: EDSR, num_in_ch: 3, num_out_ch: 3}'])
    arch_type = backbone['type']
    if arch_type not in ARCH_REGISTRY:
        plain = sorted(name for name, cls in ARCH_REGISTRY if not _is_cadyq(cls))
        raise WrapperConfigError([f'backbone.type = {arch_type!r}: not a registered arch; registered archs like it: '
                                  f'{similar_names(arch_type, plain)}'])
    cls = ARCH_REGISTRY.get(arch_type)
    if _is_cadyq(cls):
        raise WrapperConfigError([f'backbone.type = {arch_type!r}: already a CADyQ arch; wrap a full-precision '
                                  'network such as EDSR'])
    kwargs = copy.deepcopy({name: value for name, value in backbone.items() if name != 'type'})
    if device is not None:
        try:
            with torch.device(device):
                return cls(**kwargs), cls
        except Exception:  # noqa: S110  (built again below, where a real error is reported)
            pass
    try:
        return cls(**kwargs), cls
    except Exception as err:  # the backbone's own argument checks raise whatever they raise
        raise WrapperConfigError([f'backbone = {dict(backbone)!r}: {arch_type} cannot be built from these '
                                  f'arguments ({type(err).__name__}: {err})']) from err


def _is_cadyq(cls):
    return isinstance(cls, type) and issubclass(cls, CADyQNet)


def backbone_scale(cls, backbone):
    """The backbone's ``upscale`` (or RRDBNet-style ``scale``) argument: given, else its default; None if none."""
    params = inspect.signature(cls).parameters
    for name in ('upscale', 'scale'):
        if name in backbone:
            return backbone[name]
        if name in params and params[name].default is not params[name].empty:
            return params[name].default
    return None


def quantized_conv(conv, w_bits):
    """A :class:`QConv2d` computing ``conv`` with quantized weights, holding the same parameter objects."""
    qconv = QConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                    padding_mode=conv.padding_mode, w_bits=w_bits, device='meta')
    qconv.weight, qconv.bias = conv.weight, conv.bias
    return qconv.train(conv.training)


def pad_to_multiple(x, multiple):
    """Pad right and bottom to a multiple of ``multiple`` (reflection like BasicSR's SwinIR test; replication
    when the image is too small to reflect)."""
    pad_h, pad_w = -x.shape[2] % multiple, -x.shape[3] % multiple
    if not (pad_h or pad_w):
        return x
    mode = 'reflect' if pad_h < x.shape[2] and pad_w < x.shape[3] else 'replicate'
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)


class Plan(NamedTuple):
    """A backbone and where CADyQ goes in it, checked (see :func:`plan_wrapper`)."""
    net: nn.Module
    upscale: int
    pad_to: int
    placement: Placement
    trace: Trace


def plan_wrapper(backbone, upscale=None, quantize=None, act_quant=None, keep_fp=(), features=None, body=None,
                 pad_to=None, backend='fake', device=None):
    """Build the backbone (on ``device``: ``meta`` for a throwaway network, when its constructor allows) and resolve
    and check the placement options (defaults from the backbone's preset); raise :class:`WrapperConfigError`
    listing every problem."""
    net, cls = build_backbone(backbone, device)
    if device is not None:
        net.to(device)  # a constructor that cannot run on the meta device built it on the CPU
    arch_type = backbone['type']
    preset = default_patterns(cls, backbone) or {}
    problems = []
    scale = backbone_scale(cls, backbone)
    if upscale is None:
        upscale = scale
        if scale is None:
            problems.append(f'upscale is missing: {arch_type} has no upscale/scale argument, give the scale')
    elif upscale != scale:
        problems.append(f'upscale = {upscale!r}: expected {scale!r} like the backbone ({arch_type})')
    if backend not in BACKENDS:
        problems.append(f'backend = {backend!r}: expected one of {list(BACKENDS)}')
    if quantize is None and act_quant is None:
        if not preset:
            problems.append(f'quantize is missing: {arch_type} has no default placement (only {sorted(PRESETS)} '
                            'have), name the convs to quantize, e.g. [body.*.conv1, body.*.conv2]')
        quantize, act_quant = preset.get('quantize', []), preset.get('act_quant', [])
    elif quantize is None:
        problems.append('act_quant is set but quantize is missing: name the convs whose weights are quantized')
        quantize = []
    pad_to = preset.get('pad_to', 1) if pad_to is None else pad_to
    if isinstance(pad_to, bool) or not isinstance(pad_to, int) or pad_to < 1:
        problems.append(f'pad_to = {pad_to!r}: expected a positive integer')
        pad_to = 1
    placement, found = resolve_placement(net, arch_type, quantize, act_quant, keep_fp,
                                         preset.get('features', []) if features is None else features,
                                         preset.get('body') if body is None else body)
    problems += found
    if problems:
        raise WrapperConfigError(problems, upscale)
    sites = placement.sites
    trace = trace_backbone(net, {s.module for s in sites if s.kind == 'input'},
                           {s.module for s in sites if s.kind == 'output'}, set(placement.convs),
                           set(placement.features), placement.body, -(-TRACE_SIZE // pad_to) * pad_to)
    problems = trace_problems(placement, trace, arch_type)
    if problems:
        raise WrapperConfigError(problems, upscale)
    return Plan(net, upscale, pad_to, placement, trace)


_CHECKED = {}  # repr of a section's placement options -> (scale, problems)


def check_wrapper_options(options):
    """Check a ``CADyQWrapper`` options section before any work: the backbone, every pattern and the traced
    forward pass; return the scale or raise :class:`WrapperConfigError`.

    The backbone is built on the meta device where its constructor allows (fast, no memory), once per distinct
    section: the quantization-mode arguments do not change the placement, so a teacher and every stage of one
    network share one check.
    """
    if 'backbone' not in options:
        raise WrapperConfigError(['backbone is missing: the network to quantize, e.g. {type: EDSR, num_in_ch: 3, '
                                  'num_out_ch: 3}'])
    params = inspect.signature(plan_wrapper).parameters
    args = {name: value for name, value in options.items() if name in params and name != 'device'}
    key = repr(sorted(args.items()))
    if key not in _CHECKED:
        try:
            _CHECKED[key] = (plan_wrapper(**copy.deepcopy(args), device='meta').upscale, [])
        except WrapperConfigError as err:
            _CHECKED[key] = (err.upscale, err.problems)
    upscale, problems = _CHECKED[key]
    if problems:
        raise WrapperConfigError(problems, upscale)
    return upscale


@ARCH_REGISTRY.register()
class CADyQWrapper(CADyQNet):
    """CADyQ applied to a registered BasicSR arch (``backbone``), in ``fp``, ``pams`` or ``cadyq`` mode.

    Placement options (patterns over dotted module names: ``*`` within one name, ``**`` several; defaults per
    network in :mod:`wrapper_presets`: EDSR, MSRResNet, RCAN, RRDBNet, SwinIR):

    Args:
        backbone (dict): ``type`` of a registered arch and its arguments.
        upscale (int): the backbone's scale (default: its ``upscale`` / ``scale``); must agree with it.
        quantize (list[str]): plain ``nn.Conv2d`` modules whose weights are quantized (``w_bits``). Each one's
            input must be produced by an activation quantizer (checked).
        act_quant (list): activation quantizers: ``'pattern'`` (a dynamic quantizer on each matched module's
            input) or ``{input: pattern}`` / ``{output: pattern}`` with optional ``name`` (where it is
            registered; the wildcards are filled from the match, default ``<module>.quant_in`` / ``quant_out``)
            and ``fixed`` (bits of a fixed quantizer, the reference's A8; not in the FAB). Default: one dynamic
            quantizer on the input of every ``quantize`` conv.
        keep_fp (list[str]): modules (with everything inside) never quantized, whatever the patterns match.
        features (list[str]): modules whose output is a block feature (distillation), in forward order.
        body (dict): ``{input: module}`` or ``{output: module}``: the tail's input (distillation).
        pad_to (int): the input is padded (right, bottom) to a multiple of this and the output cropped (SwinIR:
            its window size).
        backend (str): ``fake`` (float simulation) or ``int8`` (eval: quantized convs as integer convolutions).
        fp_layer_bits (int): in the quantized modes, every other ``nn.Conv2d`` / ``nn.ConvTranspose2d`` of the
            backbone (outside ``keep_fp``) gets ``fp_layer_bits`` weights and a fixed ``fp_layer_bits`` quantizer of
            its own on its input (``<conv>.quant_in``); default None: they stay full precision.
    """

    def __init__(self,
                 backbone,
                 quant_mode='cadyq',
                 w_bits=8,
                 a_bits=8,
                 bits=(4, 6, 8),
                 calib_iters=1000,
                 grad_scale=1e3,
                 backend='fake',
                 upscale=None,
                 quantize=None,
                 act_quant=None,
                 keep_fp=(),
                 features=None,
                 body=None,
                 pad_to=None,
                 fp_layer_bits=None):
        plan = plan_wrapper(backbone, upscale, quantize, act_quant, keep_fp, features, body, pad_to, backend)
        super().__init__(plan.upscale, quant_mode, w_bits, a_bits, bits, calib_iters, grad_scale, backend,
                         fp_layer_bits)
        self.arch_type = backbone['type']
        self.pad_to = plan.pad_to
        self.state = ForwardState()
        self._adopt(plan.net)
        self._install(plan.placement, plan.trace)

    def _adopt(self, backbone):
        """Share the backbone's tables of modules, parameters and buffers: the wrapper's module names and state dict
        are the backbone's own, and ``backbone.forward`` runs the modules the wrapper changes. The backbone itself is
        a plain attribute (not a submodule, which would prefix every name)."""
        for table in _TABLES:
            self.__dict__[table] = backbone.__dict__[table]
        self.__dict__['backbone'] = backbone

    def _install(self, placement, trace):
        """Quantized convs, quantizers (created in forward order, so selector indices follow it) and hooks."""
        quantizers = {}
        if self.quant.quantized:
            for conv in placement.convs:
                parent, _, leaf = conv.rpartition('.')
                setattr(self.get_submodule(parent), leaf, quantized_conv(self.get_submodule(conv), self.quant.w_bits))
            self._quantize_fp_layers(placement)
            sites = {(site.kind, site.module): site for site in placement.sites}
            for key in trace.order:
                site = sites[key]
                quantizer = self.quant.fixed(site.fixed) if site.fixed else self.quant.dynamic(trace.channels[key])
                owner, _, leaf = site.name.rpartition('.')
                self.get_submodule(owner).add_module(leaf, quantizer)
                quantizers[key] = quantizer
            for conv in placement.convs:
                self.get_submodule(conv).feed_from(quantizers[trace.feeders[conv]])
        site_names = {(site.kind, site.module): site.name for site in placement.sites}

        def quantizer(key):  # (quantizer, its name) at a site; (None, None) in fp mode or where there is none
            return (quantizers[key], site_names[key]) if key in quantizers else (None, None)

        hooked = sorted({site.module for site in placement.sites} | set(placement.features) | {placement.body[1]})
        for name in hooked:
            module = self.get_submodule(name)
            if ('input', name) in quantizers or placement.body == ('input', name):
                module.register_forward_pre_hook(
                    InputHook(self.state, *quantizer(('input', name)), body=placement.body == ('input', name)))
            if ('output', name) in quantizers or name in placement.features or placement.body == ('output', name):
                module.register_forward_hook(
                    OutputHook(self.state, *quantizer(('output', name)), feature=name in placement.features,
                               body=placement.body == ('output', name)))
        self._hooked = tuple(hooked)  # for the replicas of DataParallel (_replica_parts)
        selectors = [q for q in quantizers.values() if isinstance(q, BitSelector)]
        for index, selector in enumerate(selectors):
            selector.index = index
        self.n_selectors = len(selectors)
        set_backend(self, self.backend)

    def _quantize_fp_layers(self, placement):
        """``fp_layer_bits``: the FP convs quantize their own input, so none may also hold an act_quant site."""
        fp_layers = set(fp_convs(self, placement.kept)) if self.quant.fp_layer_bits is not None else set()
        clashes = [f'{site.key}: {site.module} is a conv that fp_layer_bits quantizes (with a fixed quantizer of its '
                   f'own on its input); put it in quantize or keep_fp instead' for site in placement.sites
                   if site.module in fp_layers and site.kind == 'input']
        if clashes:
            raise WrapperConfigError(clashes, self.upscale)
        self.quant.quantize_fp_layers(self, placement.kept)

    def train(self, mode=True):
        """Also set the backbone's own flag (a plain attribute here, which its forward may read)."""
        super().train(mode)
        self.backbone.training = mode
        return self

    def forward_features(self, x, record):
        height, width = x.shape[2:]
        replica = self.__dict__.get('_is_replica', False)  # set by torch.nn.parallel.replicate
        backbone, state = self._replica_parts() if replica else (self.backbone, self.state)
        state.start(record)
        try:
            sr = backbone(pad_to_multiple(x, self.pad_to))
        finally:
            body, feats = state.finish()
        if sr.shape[2] != height * self.upscale or sr.shape[3] != width * self.upscale:
            sr = sr[:, :, :height * self.upscale, :width * self.upscale]
        return sr, body, feats

    def _replica_parts(self):
        """A DataParallel replica's backbone and forward state (made on its first forward, after ``replicate``
        filled its tables): the original backbone's attributes over the replica's tables (``replicate`` sets a
        replica's own parameters as plain attributes), and the hooks of its modules bound to its quantizers and
        state; the hook tables themselves are the original modules', shared by every replica."""
        parts = self.__dict__.get('_replica')
        if parts is not None:
            return parts
        original = self.backbone
        backbone = original.__new__(type(original))
        backbone.__dict__.update(original.__dict__)
        backbone.__dict__.update({table: self.__dict__[table] for table in _TABLES})
        backbone.__dict__.update({name: self.__dict__[name] for name in original._parameters if name in self.__dict__})
        backbone.__dict__.update(training=self.training, _is_replica=True)
        state = ForwardState()
        for name in self._hooked:
            module = self.get_submodule(name)
            for table in ('_forward_pre_hooks', '_forward_hooks'):
                hooks = getattr(module, table)
                module.__dict__[table] = type(hooks)(
                    (key, hook.bound_to(self, state) if isinstance(hook, (InputHook, OutputHook)) else hook)
                    for key, hook in hooks.items())
        self.__dict__['_replica'] = (backbone, state)
        return backbone, state

    def extra_repr(self):
        return f'backbone={self.arch_type}, quant_mode={self.quant_mode}, selectors={self.n_selectors}'
