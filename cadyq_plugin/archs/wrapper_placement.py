"""Where ``CADyQWrapper`` puts quantization in a backbone: its options resolved against the backbone's module
names, then checked against a traced forward pass (:mod:`wrapper_trace`).

Every problem is one line naming the option entry, its value and what is wrong, e.g.
``quantize[1] = 'body.*.conv9': matches no module of RCAN; modules like ['body.0.conv', ...]``, so a typo
stops the run before any work.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

import torch.nn as nn

from cadyq_plugin.archs.module_patterns import expand_template, match_names, similar_names, wildcard_count
from cadyq_plugin.problems import show

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
SITE_KEYS = ('input', 'output', 'name', 'fixed')


@dataclass
class Site:
    """One activation quantizer: on the ``kind`` ('input' | 'output') of backbone module ``module``, registered
    as module ``name``; ``fixed`` bits (a fixed PAMS quantizer in both quantized modes) or None (dynamic: a
    selector in cadyq mode, ``a_bits`` PAMS in pams mode). ``key`` is the option entry it comes from."""
    key: str
    kind: str
    module: str
    name: str
    fixed: Optional[int]


@dataclass
class Placement:
    """The resolved options: quantized convs and feature modules (each with its option entry), quantizer sites,
    the body point ``(kind, module)`` and the modules ``keep_fp`` keeps (with everything inside them)."""
    convs: Dict[str, str] = field(default_factory=dict)
    sites: List[Site] = field(default_factory=list)
    features: Dict[str, str] = field(default_factory=dict)
    body: Optional[Tuple[str, str]] = None
    kept: Set[str] = field(default_factory=set)


class _Resolver:
    """Resolves one option at a time against the backbone's modules, collecting problems."""

    def __init__(self, backbone, arch_type):
        self.modules = dict(backbone.named_modules())
        self.names = [name for name in self.modules if name]
        self.arch_type = arch_type
        self.kept = set()
        self.problems = []

    def add(self, key, value, what):
        self.problems.append(f'{key} = {show(value)}: {what}')

    def patterns(self, option, value):
        """The option's list of patterns as ``(key, pattern)``; a bad entry is a problem."""
        if not isinstance(value, (list, tuple)):
            self.add(option, value, 'expected a list of module-name patterns')
            return []
        entries = []
        for i, pattern in enumerate(value):
            if isinstance(pattern, str) and pattern:
                entries.append((f'{option}[{i}]', pattern))
            else:
                self.add(f'{option}[{i}]', pattern, 'expected a module-name pattern (a non-empty string)')
        return entries

    def match(self, key, pattern, skip_kept=True):
        """``(name, groups)`` the pattern matches (modules kept by keep_fp skipped); a problem if none."""
        matches = match_names(pattern, self.names)
        if not matches:
            self.add(key, pattern, f'matches no module of {self.arch_type}; modules like '
                     f'{similar_names(pattern, self.names)}')
            return []
        if skip_kept:
            left = [(name, groups) for name, groups in matches if name not in self.kept]
            if not left:
                self.add(key, pattern, 'matches only modules that keep_fp keeps in full precision')
            return left
        return matches

    def keep_fp(self, value):
        for key, pattern in self.patterns('keep_fp', value):
            for name, _ in self.match(key, pattern, skip_kept=False):
                self.kept.update(n for n in self.names if n == name or n.startswith(name + '.'))

    def quantize(self, value):
        """Plain ``nn.Conv2d`` modules only; a ``**`` pattern may also match other modules, which it skips."""
        convs = {}
        for key, pattern in self.patterns('quantize', value):
            matches = self.match(key, pattern)
            others = [name for name, _ in matches if type(self.modules[name]) is not nn.Conv2d]
            if others and ('**' not in pattern.split('.') or len(others) == len(matches)):
                name = others[0]
                self.add(key, pattern, f'matches {name} ({type(self.modules[name]).__name__}), not an nn.Conv2d: '
                         'only convs get quantized weights')
                continue
            for name, _ in matches:
                if name not in others:
                    convs.setdefault(name, key)
        return convs

    def site(self, key, entry):
        """One act_quant entry: ``'pattern'`` (a dynamic quantizer on the input) or ``{input|output: pattern,
        name: template, fixed: bits}``; returns its sites."""
        if isinstance(entry, str):
            entry = {'input': entry}
        if not isinstance(entry, dict) or set(entry) - set(SITE_KEYS) or ('input' in entry) == ('output' in entry):
            self.add(key, entry, "expected 'pattern' or {input: pattern | output: pattern, name: template, "
                     'fixed: bits}')
            return []
        kind = 'input' if 'input' in entry else 'output'
        pattern, template, fixed = entry[kind], entry.get('name'), entry.get('fixed')
        if not isinstance(pattern, str) or not pattern:
            self.add(f'{key}.{kind}', pattern, 'expected a module-name pattern (a non-empty string)')
            return []
        if fixed is not None and (isinstance(fixed, bool) or not isinstance(fixed, int) or not 2 <= fixed <= 8):
            self.add(f'{key}.fixed', fixed, 'expected an integer in 2..8 (a fixed-bit quantizer), or no key for a '
                     'dynamic one')
            return []
        if template is not None and (not isinstance(template, str) or wildcard_count(template) !=
                                     wildcard_count(pattern)):
            self.add(f'{key}.name', template, f'expected a module name with the wildcards of {pattern!r} '
                     f'({wildcard_count(pattern)}), each filled with what that wildcard matched')
            return []
        sites = []
        for module, groups in self.match(f'{key}.{kind}', pattern):
            default = f'{module}.quant_{"in" if kind == "input" else "out"}'
            name = expand_template(template, groups) if template else default
            if self._can_hold(f'{key}.name', template or default, name):
                sites.append(Site(key, kind, module, name, fixed))
        return sites

    def _can_hold(self, key, template, name):
        """A quantizer must be registered in an existing module that does not run its children by itself."""
        owner_name, _, leaf = name.rpartition('.')
        owner = self.modules.get(owner_name)
        if owner is None:
            self.add(key, template, f'{name}: {owner_name} is not a module of {self.arch_type}')
        elif isinstance(owner, CONTAINERS):
            self.add(key, template, f'{name}: {owner_name or self.arch_type} is an {type(owner).__name__}, which '
                     'would run the quantizer as one of its layers; name a module inside a block instead')
        elif hasattr(owner, leaf):
            self.add(key, template, f'{name}: {owner_name or self.arch_type} already has an attribute {leaf!r}')
        else:
            return True
        return False

    def conv_inputs(self, convs):
        """The default act_quant: a dynamic quantizer on the input of each quantized conv, ``<conv>.quant_in``."""
        return [Site(key, 'input', conv, f'{conv}.quant_in', None) for conv, key in convs.items()
                if self._can_hold(key, conv, f'{conv}.quant_in')]

    def act_quant(self, value):
        if not isinstance(value, (list, tuple)):
            self.add('act_quant', value, 'expected a list of activation quantizers')
            return []
        sites, seen, names = [], {}, set()
        for i, entry in enumerate(value):
            for site in self.site(f'act_quant[{i}]', entry):
                where = (site.kind, site.module)
                if where in seen:
                    self.add(site.key, entry, f'the {site.kind} of {site.module} is already quantized by {seen[where]}')
                elif site.name in names:
                    self.add(site.key, entry, f'a second quantizer named {site.name}')
                else:
                    seen[where] = site.key
                    names.add(site.name)
                    sites.append(site)
        return sites

    def features(self, value):
        features = {}
        for key, pattern in self.patterns('features', value):
            for name, _ in self.match(key, pattern, skip_kept=False):
                features.setdefault(name, key)
        return features

    def body(self, value):
        if value is None:
            self.problems.append("body is missing: {input: module} or {output: module}, where the tail's input (the "
                                 'body output used for distillation) is')
            return None
        if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in ('input', 'output'):
            self.add('body', value, "expected {input: module} or {output: module}: where the tail's input (the "
                     'body output used for distillation) is')
            return None
        (kind, pattern), = value.items()
        matches = self.match(f'body.{kind}', pattern, skip_kept=False) if isinstance(pattern, str) else None
        if matches is None:
            self.add(f'body.{kind}', pattern, 'expected a module name')
        elif len(matches) > 1:
            self.add(f'body.{kind}', pattern, f'matches {len(matches)} modules; expected exactly one')
        elif matches:
            return kind, matches[0][0]
        return None


def resolve_placement(backbone, arch_type, quantize, act_quant, keep_fp, features, body):
    """Resolve the wrapper's options against ``backbone``; returns ``(Placement, problems)``. ``act_quant`` None
    puts a dynamic quantizer on the input of every quantized conv."""
    resolver = _Resolver(backbone, arch_type)
    resolver.keep_fp(keep_fp)
    convs = resolver.quantize(quantize)
    placement = Placement(
        convs=convs,
        sites=resolver.conv_inputs(convs) if act_quant is None else resolver.act_quant(act_quant),
        features=resolver.features(features),
        body=resolver.body(body),
        kept=set(resolver.kept))
    return placement, resolver.problems


def trace_problems(placement, trace, arch_type):
    """The problems a traced forward pass revealed (:func:`~wrapper_trace.trace_backbone`)."""
    if trace.error is not None:
        return [f'backbone: {arch_type} could not run on the meta device ({trace.error}); the wrapper and the BitOPs '
                'counter need a forward pass that runs on it']
    problems, reported = [], set()

    def runs_once(key, module, what):
        calls = trace.calls[module]
        if calls != 1 and (key, module) in reported:
            return False
        reported.add((key, module))
        if calls == 0:
            problems.append(f'{key}: {module} never runs in a forward pass of {arch_type} (not called, or called '
                            f'other than as module(...)), so {what} would never happen')
        elif calls > 1:
            problems.append(f'{key}: {module} runs {calls} times per forward pass; {what} needs a module that runs '
                            'once')
        return calls == 1

    for site in placement.sites:
        runs_once(site.key, site.module, f'the quantizer on its {site.kind}')
    for conv, key in placement.convs.items():
        if runs_once(key, conv, 'weight quantization') and trace.feeders.get(conv) is None:
            problems.append(f'{key}: the input of {conv} comes from no activation quantizer; add '
                            f"{{input: '{conv}'}} to act_quant (or quantize the output of the module feeding it)")
    for module, key in placement.features.items():
        runs_once(key, module, 'this block feature')
    if placement.body is not None:
        runs_once('body', placement.body[1], 'the body output')
    entries = {('feature', m): k for m, k in placement.features.items()}
    for site in placement.sites:
        entries[(site.kind, site.module)] = entries[('quantized ' + site.kind, site.module)] = site.key
    if placement.body is not None:
        entries[('body', placement.body[1])] = 'body'
    for (role, module), found in trace.not_feature_maps.items():
        problems.append(f'{entries[(role, module)]}: the {role} of {module} is {found}, not a [B, C, H, W] feature '
                        'map (token layers stay full precision)')
    for role, module in trace.modified:
        use = f'the {role} would not be what the block produced' if role in ('feature', 'body') else \
            'the quantizer keeps it for the backward pass'
        problems.append(f'{entries[(role, module)]}: the {role} of {module} is modified in place later in the forward '
                        f'pass of {arch_type} (e.g. res += x); {use}: choose another point')
    return problems
