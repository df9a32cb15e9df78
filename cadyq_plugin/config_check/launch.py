"""How the run is launched and what its devices compute: ``num_gpu``, ``manual_seed``, ``dist_params``, the
``determinism`` section, and networks the run's device cannot execute."""
from cadyq_plugin.config_check.keys import check_unknown_keys
from cadyq_plugin.determinism import determinism_problems
from cadyq_plugin.distributed import DIST_BACKENDS, DIST_PARAM_KEYS
from cadyq_plugin.problems import is_int


def check_launch(opt, problems):
    num_gpu = opt.get('num_gpu', 'auto')
    if num_gpu != 'auto':
        if not is_int(num_gpu) or num_gpu < 0:
            problems.add('num_gpu', num_gpu, "expected 'auto' or an integer >= 0 (0 = CPU)")
        else:
            import torch
            available = torch.cuda.device_count()
            if num_gpu > available:
                problems.add('num_gpu', num_gpu, f'expected at most {available} (GPUs visible here); use 0 or '
                             "'auto' on a CPU machine")
    seed = opt.get('manual_seed')
    if seed is not None and not is_int(seed):
        problems.add('manual_seed', seed, 'expected an integer (or ~ for a random seed)')
    dist_params = opt.get('dist_params')
    if dist_params is not None and not isinstance(dist_params, dict):
        problems.add('dist_params', dist_params, f'expected a section with some of {sorted(DIST_PARAM_KEYS)}')
    elif dist_params:
        check_unknown_keys(opt, ('dist_params',), problems)
        if dist_params.get('backend') not in (None,) + DIST_BACKENDS:
            problems.add('dist_params.backend', dist_params['backend'], "expected 'gloo' (CPU), 'nccl' (GPU) or ~ "
                         '(chosen by the device)')


def check_devices(opt, student, teacher, problems):
    """The ``determinism`` section, and networks the run's device cannot execute: the int8 backend is oneDNN's
    (x86 CPUs); on a CUDA run it would stop at the first validation."""
    if isinstance(opt.get('determinism'), dict):
        check_unknown_keys(opt, ('determinism',), problems)
    for key, value, expected in determinism_problems(opt.get('determinism')):
        problems.add(key, value, expected)
    num_gpu = opt.get('num_gpu', 'auto')
    if num_gpu != 'auto' and not is_int(num_gpu):
        return  # reported by check_launch
    import torch
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not visible or num_gpu == 0:
        return
    device = f'num_gpu is {num_gpu!r} and {visible} GPU{"s are" if visible > 1 else " is"} visible'
    for key, resolved in (('network_g', student), ('network_t', teacher)):
        if resolved is not None and resolved.get('backend') == 'int8':
            problems.add(f'{key}.backend', 'int8', f'expected fake on a CUDA run ({device}): the int8 backend runs '
                         'on x86 CPUs only (oneDNN); use backend fake, or num_gpu: 0 to run on the CPU')
