"""Loading a checkpoint of an earlier stage (FP -> PAMS -> CADyQ) into a network, strictly.

Only quantizer and selector entries may be missing, and only for quantizers the checkpoint knows nothing
about (a previous stage had none there). A PAMS quantizer's range initialises every candidate of the bit
selector that replaces it. Everything else that differs is an error listing the differences.
"""
from cadyq_plugin.checkpoint import CheckpointError
from cadyq_plugin.quant import BitSelector, PAMSQuant


def expand_pams_into_selectors(state_dict, net):
    """Copy each ``<selector>.alpha``/``max_val`` of a PAMS checkpoint into all candidates of that selector."""
    expanded = dict(state_dict)
    for name, module in net.named_modules():
        if isinstance(module, BitSelector) and f'{name}.alpha' in expanded:
            for entry in ('alpha', 'max_val'):
                value = expanded.pop(f'{name}.{entry}')
                for k in range(len(module.quantizers)):
                    expanded.setdefault(f'{name}.quantizers.{k}.{entry}', value.clone())
    return expanded


def _quantizer_prefixes(net):
    """Entry prefixes of every PAMS quantizer (including selector candidates) and every selector's linear."""
    prefixes = []
    for name, module in net.named_modules():
        if isinstance(module, PAMSQuant):
            prefixes.append(name + '.')
        elif isinstance(module, BitSelector):
            prefixes.append(name + '.fc.')
    return prefixes


def load_stage_weights(net, state_dict, source):
    """Load ``state_dict`` into ``net``; returns the list of quantizer entries left at their initial values."""
    state_dict = expand_pams_into_selectors(state_dict, net)
    target = net.state_dict()
    prefixes = _quantizer_prefixes(net)
    problems = [f'unexpected key {k}' for k in state_dict if k not in target]
    problems += [
        f'shape of {k}: checkpoint {tuple(v.shape)}, network {tuple(target[k].shape)}'
        for k, v in state_dict.items() if k in target and v.shape != target[k].shape
    ]
    initial = []
    for key in target:
        if key in state_dict:
            continue
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is not None and not any(k.startswith(prefix) for k in state_dict):
            initial.append(key)
        else:
            problems.append(f'missing key {key}')
    if problems:
        listing = '\n  '.join(problems)
        raise CheckpointError(f'{source} does not fit {type(net).__name__} '
                              f'(quant_mode={getattr(net, "quant_mode", "?")}):\n  {listing}')
    net.load_state_dict(state_dict, strict=False)
    return initial
