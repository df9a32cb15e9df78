"""Models, registered into BasicSR's MODEL_REGISTRY on import."""
from cadyq_plugin.models.cadyq_model import CADyQModel
from cadyq_plugin.models.sr_model import CADyQSRModel

__all__ = ['CADyQModel', 'CADyQSRModel']
