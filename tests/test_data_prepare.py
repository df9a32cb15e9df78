"""Dataset preparation on small photos from scikit-image, against independently recomputed expectations."""
import logging
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

import cadyq_plugin  # noqa: F401  (compat shim before basicsr)
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.utils.matlab_functions import imresize
from cadyq_plugin.data import folder_steps, lmdb_writer
from cadyq_plugin.data.benchmark_sets import prepare_benchmark
from cadyq_plugin.data.div2k import prepare_div2k
from cadyq_plugin.data.div8k import prepare_div8k
from cadyq_plugin.data.folder_steps import make_lr
from cadyq_plugin.data.image_io import ImageReadError, read_image
from cadyq_plugin.data.lmdb_writer import make_lmdb
from cadyq_plugin.data.outputs import PartialOutputError
from cadyq_plugin.data.quickstart_data import build_quickstart_data
from cadyq_plugin.data.subimages import crop_positions, extract_subimages


def _bgr(rgb):
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _expected_lr(hr_bgr, scale):
    """MATLAB recipe written out independently: crop to multiples of scale, imresize, uint8 cast (round half up)."""
    h, w = hr_bgr.shape[:2]
    hr = hr_bgr[:h // scale * scale, :w // scale * scale]
    lr = imresize(hr.astype(np.float32) / 255.0, 1.0 / scale)
    return np.clip(np.floor(lr.astype(np.float64) * 255 + 0.5), 0, 255).astype(np.uint8)


def _load(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _folder(tmp_path, name, images):
    folder = tmp_path / name
    folder.mkdir(parents=True)
    for file_name, img in images.items():
        cv2.imwrite(str(folder / file_name), img)
    return folder


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(Path(folder).rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def photos():
    return {'coffee': _bgr(skdata.coffee()[100:201, 200:350]), 'chelsea': _bgr(skdata.chelsea()[50:147, 100:231])}


# ----------------------------------------------------------------------------------------------- LR and odd images


@pytest.mark.parametrize('scale', [2, 3, 4])
def test_make_lr_is_imresize_of_mod_cropped_hr(tmp_path, photos, scale):
    hr = _folder(tmp_path, 'hr', {f'{k}.png': v for k, v in photos.items()})
    make_lr(hr, tmp_path / 'lr', scale, name_tmpl=f'{{}}x{scale}')
    for name, img in photos.items():
        lr = _load(tmp_path / 'lr' / f'{name}x{scale}.png')
        assert lr.shape == (img.shape[0] // scale, img.shape[1] // scale, 3)
        assert np.array_equal(lr, _expected_lr(img, scale))


def test_grayscale_is_replicated_to_three_channels(tmp_path):
    gray = skdata.camera()[:41, :57]
    cv2.imwrite(str(tmp_path / 'g.png'), gray)
    img = read_image(tmp_path / 'g.png')
    assert img.shape == (41, 57, 3) and all(np.array_equal(img[:, :, c], gray) for c in range(3))


def test_alpha_is_dropped(tmp_path):
    bgra = _bgr(skdata.logo()[100:140, 100:150])  # RGBA -> ABGR; reorder to OpenCV's BGRA below
    bgra = np.ascontiguousarray(bgra[:, :, [1, 2, 3, 0]])
    cv2.imwrite(str(tmp_path / 'rgba.png'), bgra)
    assert np.array_equal(read_image(tmp_path / 'rgba.png'), bgra[:, :, :3])
    la = np.stack([skdata.camera()[:30, :20], np.full((30, 20), 9, np.uint8)], axis=-1)
    Image.fromarray(la, 'LA').save(tmp_path / 'la.png')
    assert np.array_equal(read_image(tmp_path / 'la.png'), np.repeat(la[:, :, :1], 3, axis=2))


def test_16_bit_is_scaled_to_8_bit_and_logged_once(tmp_path, caplog):
    values = np.array([[0, 128, 129, 257], [32896, 32897, 65407, 65535]], dtype=np.uint16)
    rgb16 = np.stack([values, values // 2, 65535 - values], axis=-1)
    cv2.imwrite(str(tmp_path / 'deep.png'), rgb16)
    expected = np.floor(rgb16 / 65535 * 255 + 0.5).astype(np.uint8)
    assert expected[0, 1, 0] == 0 and expected[0, 2, 0] == 1 and expected[1, 3, 0] == 255  # 128 -> 0, 129 -> 1
    with caplog.at_level(logging.INFO, logger='cadyq_plugin.data.image_io'):
        assert np.array_equal(read_image(tmp_path / 'deep.png'), expected)
        read_image(tmp_path / 'deep.png')
    assert sum('16-bit' in r.getMessage() and 'deep.png' in r.getMessage() for r in caplog.records) == 1


def test_unreadable_files_name_the_file(tmp_path, photos):
    (tmp_path / 'garbage.png').write_bytes(b'not an image at all')
    cv2.imwrite(str(tmp_path / 'ok.png'), photos['coffee'])
    data = (tmp_path / 'ok.png').read_bytes()
    (tmp_path / 'cut.png').write_bytes(data[:len(data) // 2])
    for name in ('garbage.png', 'cut.png', 'missing.png'):
        with pytest.raises(ImageReadError, match=name):
            read_image(tmp_path / name)
    with pytest.raises(ImageReadError, match='cut.png'):  # the first bad file, in name order
        make_lr(tmp_path, tmp_path / 'lr', 4)


def test_make_lr_handles_odd_inputs_end_to_end(tmp_path):
    gray = skdata.camera()[:43, :65]
    hr = _folder(tmp_path, 'hr', {'gray.png': gray})
    make_lr(hr, tmp_path / 'lr', 4)
    assert np.array_equal(_load(tmp_path / 'lr' / 'gray.png'), _expected_lr(np.repeat(gray[:, :, None], 3, 2), 4))


# ------------------------------------------------------------------------------------------------------ sub-images


def test_crop_positions_follow_basicsr_recipe():
    assert crop_positions(100, 48, 24, 0) == [0, 24, 48, 52]
    assert crop_positions(100, 48, 24, 5) == [0, 24, 48]
    assert crop_positions(96, 48, 24, 0) == [0, 24, 48]
    assert crop_positions(30, 48, 24, 0) == [0]


def test_extract_subimages_names_and_contents(tmp_path, photos):
    img = photos['coffee'][:100, :130]
    folder = _folder(tmp_path, 'in', {'0001x4.png': img})
    extract_subimages(folder, tmp_path / 'sub', 48, 24, strip_suffix='x4')
    names = sorted(p.name for p in (tmp_path / 'sub').iterdir())
    assert names == [f'0001_s{i:03d}.png' for i in range(1, 21)]  # 4 rows x 5 columns
    ys, xs = [0, 24, 48, 52], [0, 24, 48, 72, 82]
    for i, (y, x) in enumerate([(y, x) for y in ys for x in xs], start=1):
        assert np.array_equal(_load(tmp_path / 'sub' / f'0001_s{i:03d}.png'), img[y:y + 48, x:x + 48])


# ------------------------------------------------------------------------------------------------------------ LMDB


def _lmdb_items(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        items = {k.decode(): cv2.imdecode(np.frombuffer(v, np.uint8), cv2.IMREAD_UNCHANGED) for k, v in txn.cursor()}
    env.close()
    return items


def test_make_lmdb_round_trip_and_meta_info(tmp_path, photos):
    extract_subimages(_folder(tmp_path, 'in', {'a.png': photos['coffee'], 'b.png': photos['chelsea']}),
                      tmp_path / 'sub', 48, 24)
    files = sorted((tmp_path / 'sub').iterdir())
    make_lmdb(tmp_path / 'sub', tmp_path / 'sub.lmdb')
    items = _lmdb_items(tmp_path / 'sub.lmdb')
    assert sorted(items) == [p.stem for p in files]
    for p in files:
        assert np.array_equal(items[p.stem], _load(p))
    lines = (tmp_path / 'sub.lmdb' / 'meta_info.txt').read_text().splitlines()
    assert lines == [f'{p.stem}.png ({_load(p).shape[0]},{_load(p).shape[1]},3) 1' for p in files]


def test_existing_output_refused_and_left_intact(tmp_path, photos):
    sub = _folder(tmp_path, 'sub', {'a.png': photos['coffee']})
    make_lmdb(sub, tmp_path / 'a.lmdb')
    before = _snapshot(tmp_path / 'a.lmdb')
    with pytest.raises(FileExistsError, match='a.lmdb'):
        make_lmdb(sub, tmp_path / 'a.lmdb')
    assert _snapshot(tmp_path / 'a.lmdb') == before
    user_lr = _folder(tmp_path, 'lr', {'mine.png': photos['chelsea']})
    with pytest.raises(FileExistsError):
        make_lr(sub, user_lr, 4)
    assert [p.name for p in user_lr.iterdir()] == ['mine.png']
    # A half-written rebuild blocks even overwrite, before anything is moved.
    (tmp_path / 'a.lmdb.partial').mkdir()
    with pytest.raises(PartialOutputError):
        make_lmdb(sub, tmp_path / 'a.lmdb', overwrite=True)
    assert _snapshot(tmp_path / 'a.lmdb') == before and not list(tmp_path.glob('a.lmdb.bak-*'))
    (tmp_path / 'a.lmdb.partial').rmdir()
    # overwrite: the old output is moved aside, byte for byte, with its manifest, never deleted.
    make_lmdb(sub, tmp_path / 'a.lmdb', overwrite=True)
    backups = [p for p in tmp_path.glob('a.lmdb.bak-*') if p.is_dir()]
    assert len(backups) == 1 and _snapshot(backups[0]) == before
    assert (tmp_path / f'{backups[0].name}.manifest.json').is_file()
    assert sorted(_lmdb_items(tmp_path / 'a.lmdb')) == ['a']


def _interrupt_after(monkeypatch, module, name, n):
    """Make ``module.name`` fail after ``n`` successful calls; returns the list of calls made."""
    real, calls = getattr(module, name), []

    def flaky(*args, **kwargs):
        if len(calls) >= n:
            raise KeyboardInterrupt
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, flaky)
    return calls


def test_interrupted_folder_step_resume_and_redo(tmp_path, monkeypatch, photos):
    images = {f'{i}.png': photos['coffee'][i:i + 60, i:i + 80] for i in range(5)}
    hr = _folder(tmp_path, 'hr', images)
    with monkeypatch.context() as m:
        _interrupt_after(m, folder_steps, 'write_png', 2)
        with pytest.raises(KeyboardInterrupt):
            make_lr(hr, tmp_path / 'lr', 4)
    assert not (tmp_path / 'lr').exists()
    assert len(list((tmp_path / 'lr.partial').iterdir())) == 2
    (tmp_path / 'lr.partial' / '4.png.tmp').write_bytes(b'half a file')
    with pytest.raises(PartialOutputError, match='resume'):
        make_lr(hr, tmp_path / 'lr', 4)
    with monkeypatch.context() as m:
        calls = _interrupt_after(m, folder_steps, 'write_png', 100)
        make_lr(hr, tmp_path / 'lr', 4, partial='resume')
    assert len(calls) == 3
    assert sorted(p.name for p in (tmp_path / 'lr').iterdir()) == sorted(images)
    for name, img in images.items():
        assert np.array_equal(_load(tmp_path / 'lr' / name), _expected_lr(img, 4))
    # redo rewrites everything from scratch.
    with monkeypatch.context() as m:
        _interrupt_after(m, folder_steps, 'write_png', 1)
        with pytest.raises(KeyboardInterrupt):
            make_lr(hr, tmp_path / 'lr2', 4)
    with monkeypatch.context() as m:
        calls = _interrupt_after(m, folder_steps, 'write_png', 100)
        make_lr(hr, tmp_path / 'lr2', 4, partial='redo')
    assert len(calls) == 5 and not (tmp_path / 'lr2.partial').exists()


@pytest.mark.parametrize('partial', ['resume', 'redo'])
def test_interrupted_lmdb_is_detected_and_rebuilt(tmp_path, monkeypatch, photos, partial):
    sub = _folder(tmp_path, 'sub', {f'{i}.png': photos['chelsea'][i:i + 40, :50] for i in range(4)})
    real = lmdb_writer.make_lmdb_from_imgs

    def crash(data_path, lmdb_path, img_path_list, keys, **kwargs):
        real(data_path, lmdb_path, img_path_list[:2], keys[:2], **kwargs)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(lmdb_writer, 'make_lmdb_from_imgs', crash)
        with pytest.raises(KeyboardInterrupt):
            make_lmdb(sub, tmp_path / 'x.lmdb')
    assert not (tmp_path / 'x.lmdb').exists() and (tmp_path / 'x.lmdb.partial').exists()
    with pytest.raises(PartialOutputError, match='x.lmdb.partial'):
        make_lmdb(sub, tmp_path / 'x.lmdb')
    make_lmdb(sub, tmp_path / 'x.lmdb', partial=partial)
    items = _lmdb_items(tmp_path / 'x.lmdb')
    assert sorted(items) == ['0', '1', '2', '3']
    assert all(np.array_equal(items[k], _load(sub / f'{k}.png')) for k in items)
    assert len((tmp_path / 'x.lmdb' / 'meta_info.txt').read_text().splitlines()) == 4
    assert not (tmp_path / 'x.lmdb.partial').exists()


# ------------------------------------------------------------------------------------------------------- test sets


def test_div8k_test_sets_use_documented_factors(tmp_path, photos):
    big = photos['coffee'][:, :143]  # 101 x 143: divisible by nothing useful
    div8k = _folder(tmp_path, 'DIV8K', {'1100.png': big, '1201.png': big, '1202.png': big[:90],
                                        '1301.png': big, '1401.png': big})
    out = prepare_div8k(div8k, tmp_path / 'datasets', scale=4)
    for name, first, factor in (('Test2K', '1201', 4), ('Test4K', '1301', 2), ('Test8K', '1401', 1)):
        hr = big if factor == 1 else _expected_lr(big, factor)
        hr = hr[:hr.shape[0] // 4 * 4, :hr.shape[1] // 4 * 4]
        assert out[name]['hr'] == tmp_path / 'datasets' / name / 'HR'
        assert out[name]['lr'] == tmp_path / 'datasets' / name / 'LR_bicubic' / 'X4'
        assert np.array_equal(_load(out[name]['hr'] / f'{first}.png'), hr)
        assert np.array_equal(_load(out[name]['lr'] / f'{first}.png'), _expected_lr(hr, 4))
    assert sorted(p.name for p in out['Test2K']['hr'].iterdir()) == ['1201.png', '1202.png']
    assert not any((tmp_path / 'datasets').rglob('1100.png'))


def test_benchmark_layout_with_made_and_given_lr(tmp_path, photos):
    set5 = _folder(tmp_path, 'Set5src', {'baby.bmp': photos['coffee'], 'bird.png': photos['chelsea']})
    set14 = _folder(tmp_path, 'Set14src', {'lenna.png': photos['chelsea']})
    given = _folder(tmp_path, 'Set14lr', {'lennax4.png': _expected_lr(photos['chelsea'], 4)[::-1].copy()})
    out = prepare_benchmark({'Set5': set5, 'Set14': set14}, tmp_path / 'datasets', 4, {'Set14': given})
    root = tmp_path / 'datasets' / 'benchmark'
    assert out['Set5'] == {'hr': root / 'Set5' / 'HR', 'lr': root / 'Set5' / 'LR_bicubic' / 'X4'}
    assert sorted(p.name for p in out['Set5']['hr'].iterdir()) == ['baby.png', 'bird.png']
    assert sorted(p.name for p in out['Set5']['lr'].iterdir()) == ['baby.png', 'bird.png']
    coffee = photos['coffee']
    assert np.array_equal(_load(root / 'Set5' / 'HR' / 'baby.png'), coffee[:100, :148])
    assert np.array_equal(_load(root / 'Set5' / 'LR_bicubic' / 'X4' / 'baby.png'), _expected_lr(coffee, 4))
    assert np.array_equal(_load(root / 'Set14' / 'LR_bicubic' / 'X4' / 'lenna.png'), _load(given / 'lennax4.png'))
    wrong = _folder(tmp_path, 'wrong', {'lenna.png': _expected_lr(photos['chelsea'], 4)[:-1]})
    with pytest.raises(ValueError, match='wrong/lenna.png'):
        prepare_benchmark({'Set14': set14}, tmp_path / 'other', 4, {'Set14': wrong})


def test_div2k_pipeline_pairs_every_scale(tmp_path, photos):
    hr = _folder(tmp_path, 'DIV2K_train_HR', {'0001.png': photos['coffee'][:100, :130],
                                              '0002.png': photos['chelsea'][:96, :124]})
    out = prepare_div2k(hr, tmp_path / 'datasets', scales=(2, 4), crop_size=48, step=24)
    base = tmp_path / 'datasets' / 'DIV2K'
    assert out['hr_sub_lmdb'] == base / 'DIV2K_train_HR_sub.lmdb'
    assert out['lr_sub_lmdb'][4] == base / 'DIV2K_train_LR_bicubic_X4_sub.lmdb'
    assert (base / 'DIV2K_train_LR_bicubic' / 'X4' / '0001x4.png').exists()
    hr_items = _lmdb_items(out['hr_sub_lmdb'])
    for s in (2, 4):
        lr_items = _lmdb_items(out['lr_sub_lmdb'][s])
        assert sorted(lr_items) == sorted(hr_items)
        lr_full = _load(base / 'DIV2K_train_LR_bicubic' / f'X{s}' / f'0001x{s}.png')
        # HR 100x128 after mod-crop by lcm 4: rows [0, 24, 48, 52], columns [0, 24, 48, 72, 80].
        y, x = 52, 80
        assert np.array_equal(hr_items['0001_s020'], photos['coffee'][y:y + 48, x:x + 48])
        assert np.array_equal(lr_items['0001_s020'], lr_full[y // s:(y + 48) // s, x // s:(x + 48) // s])
    # A second run reuses every complete output.
    before = _snapshot(base)
    prepare_div2k(hr, tmp_path / 'datasets', scales=(2, 4), crop_size=48, step=24)
    assert _snapshot(base) == before


def test_quickstart_data_feeds_basicsr_datasets(tmp_path):
    paths = build_quickstart_data(tmp_path / 'qs', scale=4)
    train = PairedImageDataset({
        'dataroot_gt': str(paths['train_gt_lmdb']), 'dataroot_lq': str(paths['train_lq_lmdb']),
        'io_backend': {'type': 'lmdb'}, 'phase': 'train', 'scale': 4, 'gt_size': 96, 'use_hflip': True,
        'use_rot': True})
    assert len(train) > 50
    item = train[3]
    assert item['lq'].shape == (3, 24, 24) and item['gt'].shape == (3, 96, 96)
    val = PairedImageDataset({
        'dataroot_gt': str(paths['val_gt']), 'dataroot_lq': str(paths['val_lq']), 'io_backend': {'type': 'disk'},
        'phase': 'val', 'scale': 4, 'filename_tmpl': '{}'})
    assert len(val) == 2
    for i in range(2):
        lq, gt = val[i]['lq'], val[i]['gt']
        assert gt.shape[1:] == (lq.shape[1] * 4, lq.shape[2] * 4) and gt.shape[1] >= 64
    data_file = paths['train_gt_lmdb'] / 'data.mdb'
    stamp = data_file.stat().st_mtime_ns
    assert build_quickstart_data(tmp_path / 'qs', scale=4) == paths
    assert data_file.stat().st_mtime_ns == stamp
