"""Shell-style patterns over dotted module names, as the wrapper's options write them (``body.*.conv1``).

``*`` matches within one name component (``body.*`` is ``body.0``, not ``body.0.conv1``; ``rdb*`` is ``rdb1``);
``**`` is a whole component that matches one or more components (``**.rcab.3`` at any depth). Each wildcard is
a group, so a name template with the same wildcards (``body.*.quant_in``) can be filled from a match.
"""
import difflib
import re

_WILDCARD = re.compile(r'\*\*|\*')


def compile_pattern(pattern):
    """The regular expression (one group per wildcard) of a module-name pattern."""
    parts = []
    for component in pattern.split('.'):
        if component == '**':
            parts.append(r'([^.]+(?:\.[^.]+)*)')
        else:
            parts.append('([^.]*)'.join(re.escape(piece) for piece in component.split('*')))
    return re.compile(r'\.'.join(parts))


def wildcard_count(pattern):
    """How many wildcards (``*`` or ``**``) a pattern or a name template has."""
    return len(_WILDCARD.findall(pattern))


def match_names(pattern, names):
    """``(name, groups)`` for every name the pattern matches whole, in the order of ``names``."""
    regex = compile_pattern(pattern)
    matches = []
    for name in names:
        found = regex.fullmatch(name)
        if found is not None:
            matches.append((name, found.groups()))
    return matches


def expand_template(template, groups):
    """Fill the wildcards of ``template`` in order with ``groups`` (what a pattern's wildcards matched)."""
    pieces = _WILDCARD.split(template)
    out = [pieces[0]]
    for group, piece in zip(groups, pieces[1:]):
        out += [group, piece]
    return ''.join(out)


def similar_names(pattern, names, limit=4):
    """A few module names close to ``pattern``, for an error message about a pattern that matches nothing."""
    close = difflib.get_close_matches(pattern, names, n=limit, cutoff=0.5)
    return close or list(names)[:limit]
