"""Key maps from the original CADyQ implementation's checkpoints to the plugin's archs.

A rule is ``(regex, target)``: the regex matches a whole key, ``target`` is a ``match.expand`` template, :data:`DROP` (an entry the plugin does not
need, dropped silently), or :data:`MEAN_SHIFT` (a frozen mean-shift conv, checked against the arch's mean and
dropped). The first matching rule wins; a key no rule matches makes the conversion fail. Layouts are listed in
``shared/reference/state_dict_keys``.
"""
import re

DROP = 'drop'
MEAN_SHIFT = 'mean_shift'


def selector_rules(source_prefix, target_prefix, n_candidates=3):
    """An original bit selector (``quant_bit1..K``, ``net_small.0``) -> :class:`BitSelector` entries.

    ``source_prefix`` is a regex whose groups ``target_prefix`` may use (``\\1`` ...).
    """
    groups = re.compile(source_prefix).groups
    rules = [(rf'{source_prefix}\.quant_bit{k + 1}\.(alpha|max_val)$',
              rf'{target_prefix}.quantizers.{k}.\{groups + 1}') for k in range(n_candidates)]
    rules.append((rf'{source_prefix}\.net_small\.0\.(weight|bias)$', rf'{target_prefix}.fc.\{groups + 1}'))
    return rules


def edsr_rules(quant_mode, num_block, scale):
    """EDSR-PyTorch / PAMS / CADyQ EDSR -> EDSR_CADyQ."""
    rules = [
        (r'^(sub_mean|add_mean)\.(weight|bias)$', MEAN_SHIFT),
        (r'^head\.0\.(weight|bias)$', r'conv_first.\1'),
        (rf'^body\.{num_block}\.(weight|bias)$', r'conv_after_body.\1'),
        (r'^body\.(\d+)\.body\.0\.(weight|bias)$', r'body.\1.conv1.\2'),
    ]
    if quant_mode == 'fp':
        rules += [(r'^body\.(\d+)\.body\.2\.(weight|bias)$', r'body.\1.conv2.\2')]
    elif quant_mode == 'pams':
        rules += [
            (r'^body\.(\d+)\.quant_act1\.(alpha|max_val)$', r'body.\1.quant_in.\2'),
            (r'^body\.(\d+)\.quant_act2\.(alpha|max_val)$', DROP),  # not used by the forward pass
            (r'^body\.(\d+)\.body\.2\.(alpha|max_val)$', r'body.\1.quant_mid.\2'),
        ]
    else:
        rules += selector_rules(r'^body\.(\d+)\.bitsel1', r'body.\1.quant_in')
        rules += selector_rules(r'^body\.(\d+)\.body\.2', r'body.\1.quant_mid')
    if quant_mode != 'fp':
        rules += [
            (r'^body\.(\d+)\.body\.3\.(weight|bias)$', r'body.\1.conv2.\2'),
            (r'^body\.(\d+)\.quant_act3\.(alpha|max_val)$', r'body.\1.quant_res.\2'),
        ]
    upsample_convs = {2: [0], 3: [0], 4: [0, 2], 8: [0, 2, 4]}.get(scale, [])
    rules += [(rf'^tail\.0\.{i}\.(weight|bias)$', rf'upsample.{i}.\1') for i in upsample_convs]
    rules += [(r'^tail\.1\.(weight|bias)$', r'conv_last.\1')]
    return rules


def basicsr_edsr_rules(quant_mode, num_block, scale):
    """BasicSR's own ``EDSR`` (e.g. EDSR_Mx4_f64b16) -> EDSR_CADyQ fp: the names are already the same."""
    if quant_mode != 'fp':
        raise ValueError('a BasicSR EDSR checkpoint is a full-precision model: convert it with --quant-mode fp, '
                         'then train the pams stage from it')
    return [(r'^(.*)$', r'\1')]


# arch name -> {layout name -> (rule builder, key that identifies the layout)}
LAYOUTS = {
    'EDSR_CADyQ': {
        'original': (edsr_rules, 'head.0.weight'),
        'basicsr': (basicsr_edsr_rules, 'conv_first.weight'),
    },
}
