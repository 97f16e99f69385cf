"""mmdet-lightning: MMDetection 3.x detectors under PyTorch Lightning.

The public classes are imported on first use, so that ``mmdet-lightning --help`` answers without importing
Lightning, torch or mmdet.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from ._lazy import lazy_attributes

# mmengine imports pkg_resources, whose deprecation warning would open every run twice; nothing a user can act on
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

# without mmcv's compiled ops (mmcv-lite), `import mmcv._ext` resolves to PyTorch implementations (mmcv_ext)
from .mmcv_ext import install as _install_mmcv_ext  # noqa: E402  (imports nothing heavy)

_install_mmcv_ext()

if TYPE_CHECKING:
    from .datamodule import MMDetDataModule
    from .module import MMDetModule
    from .synthetic import make_shapes_dataset

__all__ = ["MMDetModule", "MMDetDataModule", "make_shapes_dataset"]
__version__ = "0.1.0"
_HOMES = {"MMDetModule": ".module", "MMDetDataModule": ".datamodule", "make_shapes_dataset": ".synthetic"}


__getattr__ = lazy_attributes(__name__, _HOMES)
