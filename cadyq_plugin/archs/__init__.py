"""Architectures, registered into BasicSR's ARCH_REGISTRY on import (look them up there)."""
from cadyq_plugin.archs.carn_arch import CARN_CADyQ
from cadyq_plugin.archs.edsr_arch import EDSR_CADyQ
from cadyq_plugin.archs.idn_arch import IDN_CADyQ
from cadyq_plugin.archs.srresnet_arch import SRResNet_CADyQ
from cadyq_plugin.archs.wrapper_arch import CADyQWrapper

__all__ = ['CADyQWrapper', 'CARN_CADyQ', 'EDSR_CADyQ', 'IDN_CADyQ', 'SRResNet_CADyQ']
