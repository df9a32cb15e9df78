"""The per-image content feature the bit selectors condition on (``docs/method.md#bit-selector``)."""
import torch
import torch.nn.functional as F

_GRAY = (0.299, 0.587, 0.114)


def image_gradient_feature(img, grad_scale=1.0):
    """Mean absolute Sobel gradient (d/dx, d/dy) of the grayscale image, ``[B, 2]``, without gradient.

    The 3x3 Sobel kernel ``[[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]] / 8`` (and its transpose) is applied as shifted
    differences of the replicate-padded image: no kernel tensor, so nothing is copied to the input's device.

    Args:
        img (Tensor): LR network input ``[B, 3, H, W]`` in [0, 1].
        grad_scale (float): multiplier (1e3 for EDSR/IDN/SRResNet, 1 for CARN in the reference).
    """
    with torch.no_grad():
        r, g, b = img[:, 0:1], img[:, 1:2], img[:, 2:3]
        gray = F.pad(_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b, (1, 1, 1, 1), mode='replicate')
        dx = gray[:, :, :, 2:] - gray[:, :, :, :-2]  # [B, 1, H + 2, W]: right minus left neighbour
        dy = gray[:, :, 2:, :] - gray[:, :, :-2, :]  # [B, 1, H, W + 2]: lower minus upper neighbour
        grad_x = (dx[:, :, :-2] + 2 * dx[:, :, 1:-1] + dx[:, :, 2:]) / 8.0
        grad_y = (dy[:, :, :, :-2] + 2 * dy[:, :, :, 1:-1] + dy[:, :, :, 2:]) / 8.0
        feature = torch.cat([grad_x.abs().mean(dim=(2, 3)), grad_y.abs().mean(dim=(2, 3))], dim=1)
        return feature * grad_scale
