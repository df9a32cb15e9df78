"""Layer helpers shared by the CADyQ backbones (each backbone imports these, never another backbone)."""


def upsample_factors(scale):
    """The sub-pixel steps of an upsampler: x2 per step for 2, 4, 8; one x3 step for 3."""
    if scale in (2, 4, 8):
        return [2] * {2: 1, 4: 2, 8: 3}[scale]
    if scale == 3:
        return [3]
    raise ValueError(f'upscale must be 2, 3, 4 or 8, got {scale}')
