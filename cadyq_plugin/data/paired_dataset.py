"""``CADyQPairedImageDataset``: BasicSR's paired LR/HR dataset with errors that name the dataset and the key.

BasicSR's ``PairedImageDataset`` fails deep inside OpenCV or NumPy on a missing LMDB key (``None`` bytes), a
corrupt or empty image, a GT/LQ size mismatch or an image smaller than the training patch. This subclass
reads the same files the same way (same backends, same crop, flips/rotations, colour and normalisation
options) and checks each step, raising :class:`DataError` (``dataset 'DIV2K', gt key '0001_s001': ...``).

Options beyond ``PairedImageDataset``'s:
    on_bad_sample (str): ``raise`` (default) or ``skip`` (training sets only): a bad pair is logged once per
        process and replaced by the next good one, so a few broken files in a large set do not stop a run.

(Exact resume needs nothing from the dataset: the training pipeline seeds every sample's augmentation, for this
dataset and any other, see :class:`cadyq_plugin.resume.SeededDataset`.)

Why a registered subclass rather than a patch of ``PairedImageDataset``: options files opt in explicitly
(``type: CADyQPairedImageDataset``), BasicSR's class keeps its behaviour for everything else, and the checks
live in one readable ``__getitem__`` instead of wrappers around OpenCV and the file client.
"""
import logging

import cv2
import numpy as np
from basicsr.data.paired_image_dataset import PairedImageDataset
from basicsr.data.transforms import augment, paired_random_crop
from basicsr.utils import FileClient, bgr2ycbcr, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from torchvision.transforms.functional import normalize

from cadyq_plugin.errors import UserError

logger = logging.getLogger('basicsr')

MAX_SKIPS = 50  # consecutive bad samples tried before a 'skip' dataset gives up
BAD_SAMPLE_POLICIES = ('raise', 'skip')
OPTION_KEYS = ('on_bad_sample',)  # read beyond what BasicSR's PairedImageDataset reads


class DataError(UserError, RuntimeError):
    """A sample (or a whole dataset) that cannot be read; the message names the dataset and the key."""


@DATASET_REGISTRY.register()
class CADyQPairedImageDataset(PairedImageDataset):
    """Paired LR/HR images (disk folders, meta-info file or LMDB), checked. See the module docstring."""

    def __init__(self, opt):
        self.name = opt.get('name', opt.get('phase', 'dataset'))
        self.on_bad_sample = opt.get('on_bad_sample', 'raise')
        if self.on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise DataError(f"dataset {self.name!r}: on_bad_sample must be 'raise' or 'skip', got "
                            f'{self.on_bad_sample!r}')
        try:
            super().__init__(opt)
        except (AssertionError, OSError, ValueError, KeyError) as err:
            raise DataError(f'dataset {self.name!r}: cannot list the image pairs of dataroot_gt='
                            f'{opt.get("dataroot_gt")!r} and dataroot_lq={opt.get("dataroot_lq")!r}: '
                            f'{type(err).__name__}: {err}') from err
        if not self.paths:
            raise DataError(f'dataset {self.name!r}: no image pairs in dataroot_gt={self.gt_folder!r} and '
                            f'dataroot_lq={self.lq_folder!r}')
        self._warned = set()

    # ------------------------------------------------------------------------------------------- reading
    def _client(self):
        if self.file_client is None:
            backend = dict(self.io_backend_opt)
            backend_type = backend.pop('type')
            try:
                self.file_client = FileClient(backend_type, **backend)
            except Exception as err:  # lmdb.Error and friends: the message says which database
                raise DataError(f'dataset {self.name!r}: cannot open the {backend_type} backend '
                                f'({backend.get("db_paths", "")}): {type(err).__name__}: {err}') from err
        return self.file_client

    def _where(self, client_key):
        folder = self.gt_folder if client_key == 'gt' else self.lq_folder
        kind = 'LMDB' if self.io_backend_opt.get('type') == 'lmdb' else 'folder'
        return f'{kind} {folder!r}'

    def _read(self, path, client_key):
        """Decode one image (BGR float32 in [0, 1]) or raise :class:`DataError` naming the key."""
        what = f'dataset {self.name!r}, {client_key} key {path!r}'
        try:
            content = self._client().get(path, client_key)
        except DataError:
            raise
        except Exception as err:  # FileNotFoundError, lmdb.Error, ...
            raise DataError(f'{what}: cannot be read from {self._where(client_key)}: {type(err).__name__}: {err}') \
                from err
        if content is None:
            raise DataError(f'{what}: missing from {self._where(client_key)} (listed in its meta_info.txt but not '
                            'stored; rebuild the LMDB)')
        buffer = np.frombuffer(content, np.uint8)
        img = None
        if buffer.size:
            try:
                img = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
            except cv2.error:
                img = None
        if img is None:
            raise DataError(f'{what}: not a readable image ({buffer.size} bytes: empty, truncated or corrupt) in '
                            f'{self._where(client_key)}')
        return img.astype(np.float32) / 255.

    def _check_sizes(self, img_gt, img_lq, scale, gt_key):
        what = f'dataset {self.name!r}, gt key {gt_key!r}'
        (h_gt, w_gt), (h_lq, w_lq) = img_gt.shape[:2], img_lq.shape[:2]
        if self.opt['phase'] == 'train':
            if (h_gt, w_gt) != (h_lq * scale, w_lq * scale):
                raise DataError(f'{what}: GT is {h_gt}x{w_gt} but LQ is {h_lq}x{w_lq}; at scale {scale} GT must be '
                                f'exactly {h_lq * scale}x{w_lq * scale}')
            gt_size = self.opt['gt_size']
            if h_gt < gt_size or w_gt < gt_size:
                raise DataError(f'{what}: GT {h_gt}x{w_gt} (LQ {h_lq}x{w_lq}) is smaller than the training patch '
                                f'gt_size={gt_size} (LQ {gt_size // scale})')
        elif h_gt < h_lq * scale or w_gt < w_lq * scale:
            raise DataError(f'{what}: GT is {h_gt}x{w_gt}, smaller than LQ {h_lq}x{w_lq} times scale {scale}')

    # ------------------------------------------------------------------------------------------- samples
    def __getitem__(self, index):
        if self.on_bad_sample == 'raise':
            return self._sample(index)
        first_error = None
        for attempt in range(min(MAX_SKIPS, len(self.paths))):
            current = (index + attempt) % len(self.paths)
            try:
                return self._sample(current)
            except DataError as err:
                first_error = first_error or err
                if current not in self._warned:
                    self._warned.add(current)
                    logger.warning(f'skipping a bad sample (on_bad_sample: skip): {err}')
        raise DataError(f'dataset {self.name!r}: {min(MAX_SKIPS, len(self.paths))} samples in a row from index '
                        f'{index} are bad (first: {first_error})')

    def _sample(self, index):
        scale = self.opt['scale']
        gt_path = self.paths[index]['gt_path']
        lq_path = self.paths[index]['lq_path']
        img_gt = self._read(gt_path, 'gt')
        img_lq = self._read(lq_path, 'lq')
        self._check_sizes(img_gt, img_lq, scale, gt_path)

        if self.opt['phase'] == 'train':
            img_gt, img_lq = paired_random_crop(img_gt, img_lq, self.opt['gt_size'], scale, gt_path)
            img_gt, img_lq = augment([img_gt, img_lq], self.opt['use_hflip'], self.opt['use_rot'])

        if self.opt.get('color') == 'y':
            img_gt = bgr2ycbcr(img_gt, y_only=True)[..., None]
            img_lq = bgr2ycbcr(img_lq, y_only=True)[..., None]
        if self.opt['phase'] != 'train':
            # benchmark GT that is not a multiple of the scale: crop it like BasicSR
            img_gt = img_gt[0:img_lq.shape[0] * scale, 0:img_lq.shape[1] * scale, :]

        img_gt, img_lq = img2tensor([img_gt, img_lq], bgr2rgb=True, float32=True)
        if self.mean is not None or self.std is not None:
            normalize(img_lq, self.mean, self.std, inplace=True)
            normalize(img_gt, self.mean, self.std, inplace=True)
        return {'lq': img_lq, 'gt': img_gt, 'lq_path': lq_path, 'gt_path': gt_path}

