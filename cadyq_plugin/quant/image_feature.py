"""The per-image content feature the bit selectors condition on (SPEC §2)."""
import torch
import torch.nn.functional as F

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
_GRAY = (0.299, 0.587, 0.114)


def image_gradient_feature(img, grad_scale=1.0):
    """Mean absolute Sobel gradient (d/dx, d/dy) of the grayscale image, ``[B, 2]``, without gradient.

    Args:
        img (Tensor): LR network input ``[B, 3, H, W]`` in [0, 1].
        grad_scale (float): multiplier (1e3 for EDSR/IDN/SRResNet, 1 for CARN in the reference).
    """
    with torch.no_grad():
        r, g, b = img[:, 0:1], img[:, 1:2], img[:, 2:3]
        gray = _GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b
        kx = _SOBEL_X.to(img)
        kernels = torch.stack([kx, kx.t()]).unsqueeze(1)  # [2, 1, 3, 3]
        grads = F.conv2d(F.pad(gray, (1, 1, 1, 1), mode='replicate'), kernels)
        return grads.abs().mean(dim=(2, 3)) * grad_scale
