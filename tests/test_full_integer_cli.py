"""A full-integer network (``backend: int8``, ``fp_layer_bits: 8``) through the real ``basicsr`` command, from a
quantization-aware training run and from a post-training calibration: ``basicsr train``, ``export``, ``test``
and ``infer``."""
import csv
import glob
import os

from tiny_workspace import OPTIONS, make_tiny_pairs, run_cli, tiny_stage_options

from cadyq_plugin.tools.derive_options import derive_options

FULL_INTEGER = {'type': 'IDN_CADyQ', 'quant_mode': 'pams', 'backend': 'int8', 'fp_layer_bits': 8}


def train(workdir, data_root, stage, **overrides):
    opt_path = tiny_stage_options(workdir, data_root, 'train_idn', stage, **overrides)
    result = run_cli(['train', '-opt', opt_path], workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    name = derive_options(opt_path, {}, opt_path)['name']
    return os.path.join('experiments', name, 'models', 'net_g_latest.pth'), result


def check_test_and_infer(workdir, data_root, model, label):
    """``basicsr test`` and ``basicsr infer --backend int8`` of the full-integer network from ``model``."""
    test_opt = os.path.join(workdir, f'test_{label}.yml')
    derive_options(os.path.join(OPTIONS, 'test_idn_cadyq_image.yml'), {
        'name': f'full_integer_{label}',
        'num_gpu': 0,
        'network_g': FULL_INTEGER,
        'datasets': {'test_1': {'name': 'Tiny', 'type': 'CADyQPairedImageDataset', 'dataroot_gt': f'{data_root}/HR',
                                'dataroot_lq': f'{data_root}/LR', 'filename_tmpl': '{}',
                                'io_backend': {'type': 'disk'}}},
        'path.pretrain_network_g': model,
    }, test_opt)
    result = run_cli(['test', '-opt', test_opt], workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = list(csv.reader(open(glob.glob(os.path.join(workdir, 'results', f'full_integer_{label}',
                                                       'Tiny_results.csv'))[0])))
    assert rows[-1][0] == 'mean' and 10 < float(rows[-1][1]) < 60  # a real PSNR
    out = os.path.join(workdir, f'infer_{label}')
    result = run_cli(['infer', '--arch', 'IDN_CADyQ', '--quant-mode', 'pams', '--fp-layer-bits', '8', '--backend',
                      'int8', '--model', model, '-i', f'{data_root}/LR', '-o', out], workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(os.listdir(out)) == ['astronaut.png', 'chelsea.png', 'coffee.png', 'rocket.png']


def test_full_integer_network_from_qat_and_from_post_training_calibration(tmp_path):
    workdir = str(tmp_path)
    data_root = make_tiny_pairs(os.path.join(workdir, 'data'))
    train(workdir, data_root, 'fp')
    reference, _ = train(workdir, data_root, 'pams')
    # quantization-aware: the PAMS stage with 8-bit FP layers, from the same FP checkpoint (their ranges start from
    # calibration, like every other range of that stage)
    qat, result = train(workdir, data_root, 'pams', name='IDN_pams_fp8', **{'network_g.fp_layer_bits': 8})
    log = open(glob.glob(os.path.join(workdir, 'experiments', 'IDN_pams_fp8', 'train_*.log'))[0]).read()
    assert 'quantizer entries start from their initial values' in log
    check_test_and_infer(workdir, data_root, qat, 'qat')
    # post-training: the reference PAMS checkpoint, its FP layers calibrated on the LR images
    ptq = os.path.join(workdir, 'idn_full_int8.pth')
    result = run_cli(['export', '--arch', 'IDN_CADyQ', '--quant-mode', 'pams', '--fp-layer-bits', '8', '--model',
                      reference, '--calibrate', f'{data_root}/LR', ptq], workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'calibrated the input ranges of 5 8-bit FP layers on 4 images' in result.stdout
    check_test_and_infer(workdir, data_root, ptq, 'ptq')
    # without the ranges, the reference checkpoint is refused with what to do
    result = run_cli(['export', '--arch', 'IDN_CADyQ', '--quant-mode', 'pams', '--fp-layer-bits', '8', '--model',
                      reference, os.path.join(workdir, 'no_ranges.pth')], workdir)
    assert result.returncode == 1 and '--calibrate FOLDER' in result.stderr
    assert not os.path.exists(os.path.join(workdir, 'no_ranges.pth'))
