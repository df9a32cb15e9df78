"""CADyQ for BasicSR: importing the package registers its archs, losses, metrics and model."""
from cadyq_plugin import _compat

_compat.apply()

from cadyq_plugin import archs, losses, metrics, models  # noqa: E402,F401  (registration)
from cadyq_plugin.data import paired_dataset  # noqa: E402,F401  (registers CADyQPairedImageDataset)

__version__ = '0.1.0'
