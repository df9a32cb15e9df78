"""Reading a BasicSR options file outside BasicSR's pipelines (for ``bitops`` and friends)."""
import yaml


def read_options(path):
    """Parse an options yml the way BasicSR does (ordered mappings), with a clear error for a bad file."""
    import cadyq_plugin  # noqa: F401
    from basicsr.utils.options import ordered_yaml
    try:
        with open(path, mode='r') as f:
            opt = yaml.load(f, Loader=ordered_yaml()[0])
    except OSError as err:
        raise SystemExit(f'cannot read options file {path!r}: {err.strerror}') from err
    except yaml.YAMLError as err:
        raise SystemExit(f'options file {path!r} is not valid YAML: {err}') from err
    if not isinstance(opt, dict) or 'network_g' not in opt:
        raise SystemExit(f'options file {path!r} has no network_g section')
    return opt
