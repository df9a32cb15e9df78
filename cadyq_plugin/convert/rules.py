"""Key maps from the original CADyQ implementation's checkpoints to the plugin's archs.

A rule is ``(regex, target)``: the regex matches a whole key, ``target`` is a ``match.expand`` template,
:data:`DROP` (an entry the plugin does not need, dropped silently), or :data:`MEAN_SHIFT` (a frozen mean-shift
conv, checked against the arch's mean and dropped). The first matching rule wins; a key no rule matches makes
the conversion fail. The original layouts are kept as test data in ``tests/data/reference/state_dict_keys``.
"""
import re

from cadyq_plugin.checkpoint import CheckpointError

DROP = 'drop'
MEAN_SHIFT = 'mean_shift'


class ZeroBias(str):
    """Target template of a conv weight whose source conv has no bias but the plugin's conv has one: the weight
    is mapped as usual and ``<prefix>.bias`` is filled with zeros (the same function)."""


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
        raise CheckpointError('a BasicSR EDSR checkpoint is a full-precision model: convert it with --quant-mode fp, '
                         'then train the pams stage from it')
    return [(r'^(.*)$', r'\1')]


def carn_rules(quant_mode, num_block, scale, num_res_block=3):
    """CARN-pytorch / PAMS / CADyQ CARN -> CARN_CADyQ.

    The original's ``b<i>.b<j>`` / ``b<i>.c<j>`` / ``c<j>`` names are 1-based. It is multi-scale: only the
    ``upsample.up<scale>`` branch is kept, the other scales' upsamplers are dropped.
    """
    rules = [
        (r'^(sub_mean|add_mean)\.shifter\.(weight|bias)$', MEAN_SHIFT),
        (r'^entry\.(weight|bias)$', r'conv_first.\1'),
        (r'^exit\.(weight|bias)$', r'conv_last.\1'),
        (rf'^upsample\.up{scale}\.body\.(\d+)\.(weight|bias)$', r'upsample.\1.\2'),
        (r'^upsample\.up\d+\.body\.\d+\.(weight|bias)$', DROP),  # the other scales' branches
    ]
    for j in range(1, num_block + 1):
        rules.append((rf'^c{j}\.body\.0\.(weight|bias)$', rf'fusions.{j - 1}.\1'))
    for i in range(1, num_block + 1):
        for j in range(1, num_res_block + 1):
            src, dst = rf'^b{i}\.b{j}', f'body.{i - 1}.blocks.{j - 1}'
            rules.append((rf'^b{i}\.c{j}\.body\.0\.(weight|bias)$', rf'body.{i - 1}.fusions.{j - 1}.\1'))
            if quant_mode == 'fp':
                rules += [(rf'{src}\.body\.0\.(weight|bias)$', rf'{dst}.conv1.\1'),
                          (rf'{src}\.body\.2\.(weight|bias)$', rf'{dst}.conv2.\1')]
                continue
            rules += [(rf'{src}\.body\.1\.(weight|bias)$', rf'{dst}.conv1.\1'),
                      (rf'{src}\.body\.4\.(weight|bias)$', rf'{dst}.conv2.\1')]
            if quant_mode == 'pams':
                rules += [
                    (rf'{src}\.body\.0\.(alpha|max_val)$', rf'{dst}.quant_in.\1'),
                    (rf'{src}\.body\.3\.(alpha|max_val)$', rf'{dst}.quant_mid.\1'),
                    # the same modules as body.0 / body.3: the original registers each quantizer twice (as an
                    # attribute and inside its Sequential), so its state dict holds every value twice
                    (rf'{src}\.quant_act[12]\.(alpha|max_val)$', DROP),
                ]
            else:
                rules += selector_rules(rf'{src}\.body\.0', f'{dst}.quant_in')
                rules += selector_rules(rf'{src}\.body\.3', f'{dst}.quant_mid')
    return rules


def idn_rules(quant_mode, num_block, scale):
    """IDN-pytorch / PAMS / CADyQ IDN -> IDN_CADyQ (``dblocks`` -> ``body``, ``enhancement_top/bottom`` ->
    ``top``/``bottom``, ``compression`` -> ``compress``)."""
    rules = [
        (r'^dblocks\.(\d+)\.compression\.(weight|bias)$', r'body.\1.compress.\2'),
        (r'^deconv\.(weight|bias)$', r'deconv.\1'),
    ]
    units = r'^dblocks\.(\d+)\.enhancement_(top|bottom)'
    if quant_mode == 'fp':
        rules += [(r'^fblock\.module\.0\.(weight|bias)$', r'fblock.conv1.\1'),
                  (r'^fblock\.module\.2\.(weight|bias)$', r'fblock.conv2.\1')]
        rules += [(rf'{units}\.{2 * k}\.(weight|bias)$', rf'body.\1.\2.conv{k + 1}.\3') for k in range(3)]
        return rules
    rules += [
        (r'^fblock\.module\.0\.(alpha|max_val)$', r'fblock.quant1.\1'),
        (r'^fblock\.module\.1\.(weight|bias)$', r'fblock.conv1.\1'),
        (r'^fblock\.module\.3\.(alpha|max_val)$', r'fblock.quant2.\1'),
        (r'^fblock\.module\.4\.(weight|bias)$', r'fblock.conv2.\1'),
        # second names of module.0 / module.3 and of the PAMS enhancement_top/bottom.0/3/6: the original registers
        # each quantizer twice (as an attribute and inside its Sequential), so its state dict holds every value twice
        (r'^fblock\.quant_actf[12]\.(alpha|max_val)$', DROP),
        (r'^dblocks\.\d+\.quant_act[1-6]\.(alpha|max_val)$', DROP),
    ]
    rules += [(rf'{units}\.{3 * k + 1}\.(weight|bias)$', rf'body.\1.\2.conv{k + 1}.\3') for k in range(3)]
    if quant_mode == 'pams':
        rules += [(rf'{units}\.{3 * k}\.(alpha|max_val)$', rf'body.\1.\2.quant{k + 1}.\3') for k in range(3)]
    else:
        for k in range(3):
            rules += selector_rules(rf'{units}\.{3 * k}', rf'body.\1.\2.quant{k + 1}')
    return rules


def srresnet_rules(quant_mode, num_block, scale):
    """The original FP / PAMS / CADyQ SRResNet -> SRResNet_CADyQ (``head.0``/``head.1`` -> ``conv_first``/``act``,
    ``body.<n>``/``body.<n+1>`` -> ``conv_after_body``/``bn_after_body``, ``tail`` -> ``upsample``/``conv_last``).

    The original FP model's block convs have no bias (its quantized ones do): they get zero biases here.
    """
    rules = [
        # built by the original but never called (its forward has them commented out): no mean shift
        (r'^(sub_mean|add_mean)\.(weight|bias)$', DROP),
        (r'^head\.0\.weight$', 'conv_first.weight'),
        (r'^head\.1\.weight$', 'act.weight'),  # the shared PReLU, also stored as body.<i>.act.weight
        (rf'^body\.{num_block}\.weight$', 'conv_after_body.weight'),
        (rf'^body\.{num_block + 1}\.(weight|bias|running_mean|running_var|num_batches_tracked)$',
         r'bn_after_body.\1'),
        (r'^body\.(\d+)\.(bn[12]\.(weight|bias|running_mean|running_var|num_batches_tracked)|act\.weight)$',
         r'body.\1.\2'),
        (r'^tail\.0\.(\d+)\.weight$', r'upsample.\1.weight'),
        (r'^tail\.1\.weight$', 'conv_last.weight'),
    ]
    if quant_mode == 'fp':
        return rules + [(r'^body\.(\d+)\.(conv[12])\.weight$', ZeroBias(r'body.\1.\2.weight'))]
    rules += [(r'^body\.(\d+)\.(conv[12]\.(weight|bias))$', r'body.\1.\2')]
    if quant_mode == 'pams':
        rules += [(r'^body\.(\d+)\.quant_act1\.(alpha|max_val)$', r'body.\1.quant_in.\2'),
                  (r'^body\.(\d+)\.quant_act2\.(alpha|max_val)$', r'body.\1.quant_mid.\2')]
    else:
        rules += selector_rules(r'^body\.(\d+)\.classify1', r'body.\1.quant_in')
        rules += selector_rules(r'^body\.(\d+)\.classify2', r'body.\1.quant_mid')
    return rules


# arch name -> {layout name -> (rule builder, key that identifies the layout)}
LAYOUTS = {
    'EDSR_CADyQ': {
        'original': (edsr_rules, 'head.0.weight'),
        'basicsr': (basicsr_edsr_rules, 'conv_first.weight'),
    },
    'CARN_CADyQ': {
        'original': (carn_rules, 'entry.weight'),
    },
    'IDN_CADyQ': {
        'original': (idn_rules, 'dblocks.0.compression.weight'),
    },
    'SRResNet_CADyQ': {
        'original': (srresnet_rules, 'head.0.weight'),
    },
}
