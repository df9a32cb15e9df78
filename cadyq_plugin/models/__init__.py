"""Models, registered into BasicSR's MODEL_REGISTRY on import."""
from cadyq_plugin.models.cadyq_model import CADyQModel

__all__ = ['CADyQModel']
