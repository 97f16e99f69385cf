"""mmdet-lightning: MMDetection 3.x detectors under PyTorch Lightning."""

from .datamodule import MMDetDataModule
from .module import MMDetModule
from .synthetic import make_shapes_dataset

__all__ = ["MMDetModule", "MMDetDataModule", "make_shapes_dataset"]
__version__ = "0.1.0"
