"""``python -m mmdet_lightning.deploy predict model.onnx images/ --output predictions/``."""

from .predict import main

if __name__ == "__main__":
    main()
