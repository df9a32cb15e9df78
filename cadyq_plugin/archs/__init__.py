"""Architectures, registered into BasicSR's ARCH_REGISTRY on import."""
from cadyq_plugin.archs.edsr_arch import EDSR_CADyQ

ARCHS = {'EDSR_CADyQ': EDSR_CADyQ}

__all__ = ['ARCHS', 'EDSR_CADyQ']
