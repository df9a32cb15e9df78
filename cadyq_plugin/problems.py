"""How the checks word a bad value, so every check reads alike: ``key = value: expected``, with a "did you mean"
for a misspelt name, and what counts as an integer in an options file."""
import difflib
import numbers


def show(value):
    """``value`` as a problem line shows it: its repr (a mapping as a plain dict), cut to 80 characters."""
    text = repr(dict(value) if isinstance(value, dict) else value)
    return text if len(text) <= 80 else text[:77] + '...'


class Problems(list):
    """Problem lines, one per bad value."""

    def add(self, key, value, expected):
        self.append(f'{key} = {show(value)}: {expected}')

    def missing(self, key, expected):
        self.append(f'{key} is missing: {expected}')


def did_you_mean(name, candidates):
    """`` (did you mean 'x'?)`` for the closest of ``candidates``, or an empty string."""
    close = difflib.get_close_matches(str(name), sorted(str(c) for c in candidates), n=1, cutoff=0.6)
    return f' (did you mean {close[0]!r}?)' if close else ''


def is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_count(value, minimum=1):
    """An integer >= minimum; integral floats (``!!float 5e3`` in BasicSR options) count as integers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return float(value).is_integer() and value >= minimum
