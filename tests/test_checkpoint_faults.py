"""Each kind of unusable checkpoint file gets its own message naming the file; ``--trusted`` is offered only by
``basicsr convert`` and only for a pickle; ``basicsr convert`` recognises a file that is already a plugin
checkpoint."""
import argparse
import io
import zipfile

import cv2
import numpy as np
import pytest
import torch

import cadyq_plugin  # noqa: F401  (compat shim before basicsr)
from basicsr.archs import build_network
from cadyq_plugin.checkpoint import CheckpointError, load_checkpoint
from cadyq_plugin.cli import main as cli_main
from tiny_workspace import make_tiny_pairs, run_cli, tiny_stage_options

SMALL = {
    'EDSR_CADyQ': dict(num_feat=16, num_block=2),
    'CARN_CADyQ': dict(num_feat=16, num_block=2, num_res_block=2),
    'IDN_CADyQ': dict(num_feat=32, d=8, s=4, num_block=2),
    'SRResNet_CADyQ': dict(num_feat=16, num_block=3),
}


def _saved(obj, **kwargs):
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


def _weights():
    return {'params': {'conv.weight': torch.ones(4, 3, 3, 3)}}


def _png():
    ok, encoded = cv2.imencode('.png', np.zeros((8, 8, 3), np.uint8))
    return encoded.tobytes()


def _other_zip():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as archive:
        archive.writestr('notes/readme.txt', 'hello')
    return buffer.getvalue()


# file content -> the words its message must contain (and no other kind's words)
FAULTS = {
    'empty': (lambda: b'', 'is empty (0 bytes)'),
    'truncated': (lambda: _saved(_weights())[:-200], 'is truncated'),
    'truncated_legacy': (lambda: _saved(_weights(), _use_new_zipfile_serialization=False)[:-100], 'is truncated'),
    'text': (lambda: b'lr: 1e-4\nnetwork: edsr\n',
             "is not a PyTorch checkpoint: it is a text file (starts with 'lr: 1e-4')"),
    'image': (_png, 'is not a PyTorch checkpoint: it is a PNG image'),
    'garbage': (lambda: bytes(range(7, 200)) * 5, 'is not a PyTorch checkpoint: it is unrecognised content'),
    'zip': (_other_zip, 'is not a PyTorch checkpoint: a zip archive without the data.pkl'),
    'pickle': (lambda: _saved({'params': {}, 'args': argparse.Namespace(scale=4)}),
               'pickles Python objects (argparse.Namespace)'),
    'pickle_legacy': (lambda: _saved({'args': argparse.Namespace()}, _use_new_zipfile_serialization=False),
                      'pickles Python objects (argparse.Namespace)'),
}
KINDS = ['is empty', 'is truncated', 'is not a PyTorch checkpoint', 'pickles Python objects', 'does not exist',
         'is not a file', 'is damaged']


@pytest.mark.parametrize('fault', sorted(FAULTS))
def test_each_fault_has_its_own_message_naming_the_file(tmp_path, fault):
    make, expected = FAULTS[fault]
    path = tmp_path / f'{fault}.pth'
    path.write_bytes(make())
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(path))
    message = str(err.value)
    assert repr(str(path)) in message and expected in message
    assert [kind for kind in KINDS if kind in message] == [next(k for k in KINDS if k in expected)]
    assert '--trusted' not in message  # training and testing have no such flag


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(CheckpointError, match=r"'.*nothere\.pth' does not exist"):
        load_checkpoint(str(tmp_path / 'nothere.pth'))
    with pytest.raises(CheckpointError, match=r'is not a file'):
        load_checkpoint(str(tmp_path))


def test_a_complete_checkpoint_loads_in_both_formats(tmp_path):
    for name, kwargs in (('new.pth', {}), ('legacy.pth', {'_use_new_zipfile_serialization': False})):
        (tmp_path / name).write_bytes(_saved(_weights(), **kwargs))
        assert torch.equal(load_checkpoint(str(tmp_path / name))['params']['conv.weight'], torch.ones(4, 3, 3, 3))


def test_a_complete_archive_with_a_corrupt_record_is_reported_as_damaged(tmp_path):
    data = bytearray(_saved(_weights()))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith('/data.pkl'))
    header = info.header_offset
    start = header + 30 + int.from_bytes(data[header + 26:header + 28], 'little') + \
        int.from_bytes(data[header + 28:header + 30], 'little')
    data[start + 2:start + 6] = b'\xff\xfe\xfd\xfc'  # the pickle right after its protocol header
    (tmp_path / 'corrupt.pth').write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"'.*corrupt\.pth' is damaged \("):
        load_checkpoint(str(tmp_path / 'corrupt.pth'))


def test_training_names_the_pickle_without_offering_trusted(tmp_path):
    data = make_tiny_pairs(str(tmp_path / 'data'))
    ckpt = tmp_path / 'pretrained.pth'
    net = build_network({'type': 'EDSR_CADyQ', 'quant_mode': 'fp', **SMALL['EDSR_CADyQ']})
    torch.save({'params': net.state_dict(), 'args': argparse.Namespace(scale=4)}, ckpt)
    opt = tiny_stage_options(str(tmp_path), data, 'train_edsrbaseline', 'fp', total_iter=1,
                             **{'network_g.num_feat': 16, 'network_g.num_block': 2, 'logger.use_tb_logger': False,
                                'path.pretrain_network_g': str(ckpt)})
    result = run_cli(['train', '-opt', opt], cwd=str(tmp_path))
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert 'pretrained.pth' in output and 'pickles Python objects (argparse.Namespace)' in output
    assert 'basicsr convert' in output and '--trusted' not in output and 'Traceback' not in output


def test_convert_offers_trusted_only_for_a_pickle(tmp_path, capsys):
    src = tmp_path / 'original.pth'
    for content, offered in ((FAULTS['pickle'][0](), True), (FAULTS['truncated'][0](), False)):
        src.write_bytes(content)
        assert cli_main(['convert', str(src), str(tmp_path / 'out.pth'), '--arch', 'EDSR_CADyQ',
                         '--quant-mode', 'fp']) == 1
        err = capsys.readouterr().err
        assert 'original.pth' in err and ('--trusted' in err) == offered
    assert not (tmp_path / 'out.pth').exists()


# the plugin's EDSR fp names are BasicSR's EDSR names: that case has its own test below
PLUGIN_FORMATS = [(a, m) for a in sorted(SMALL) for m in ('fp', 'pams', 'cadyq') if (a, m) != ('EDSR_CADyQ', 'fp')]


@pytest.mark.parametrize('arch,mode', PLUGIN_FORMATS)
def test_convert_recognises_a_plugin_checkpoint(tmp_path, capsys, arch, mode):
    """Any size (the small configurations here) and any requested target: the file is named for what it is."""
    src = tmp_path / 'plugin.pth'
    torch.save({'params': build_network({'type': arch, 'quant_mode': mode, **SMALL[arch]}).state_dict()}, src)
    for target_arch, target_mode in ((arch, mode), ('EDSR_CADyQ', 'fp')):
        assert cli_main(['convert', str(src), str(tmp_path / 'out.pth'), '--arch', target_arch,
                         '--quant-mode', target_mode]) == 1
        err = capsys.readouterr().err
        assert (f"'{src}' is already a plugin checkpoint ({arch}, {mode} mode): nothing to convert; use it as "
                'path.pretrain_network_g') in err
    assert not (tmp_path / 'out.pth').exists()


def test_convert_of_edsr_fp_names_says_both_readings(tmp_path, capsys):
    src = tmp_path / 'edsr.pth'
    torch.save({'params': build_network({'type': 'EDSR_CADyQ', 'quant_mode': 'fp'}).state_dict()}, src)
    assert cli_main(['convert', str(src), str(tmp_path / 'out.pth'), '--arch', 'EDSR_CADyQ',
                     '--quant-mode', 'pams']) == 1
    err = capsys.readouterr().err
    assert 'needs no conversion' in err and 'convert it with --arch EDSR_CADyQ --quant-mode fp' in err
    assert not (tmp_path / 'out.pth').exists()
