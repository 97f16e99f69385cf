"""Detect objects in every image of a folder with a trained checkpoint; write COCO results and drawn images.

    python examples/predict_folder.py --config configs/mmdet/shapes_faster_rcnn.py \\
        --checkpoint work_dirs/demo/checkpoints/last.ckpt --images data/shapes/val --out work_dirs/predictions

``--checkpoint`` takes a Lightning checkpoint of ``MMDetModule`` or an mmdet checkpoint (``.pth``).
Writes ``<out>/results.bbox.json`` and ``<out>/<image>.png`` with the boxes (and masks) above ``--score-thr``.
The same from the command line: ``mmdet-lightning predict --config ... --ckpt_path ... --data.predict_folder ...``.
"""

from __future__ import annotations

import argparse

from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.callbacks import DetectionWriter
from mmdet_lightning.lightning_package import pl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--images", required=True, help="folder of images (.jpg, .png, ...)")
    parser.add_argument("--out", default="work_dirs/predictions")
    parser.add_argument("--score-thr", type=float, default=0.3)
    args = parser.parse_args()

    module = MMDetModule(args.config, load_from=args.checkpoint)
    trainer = pl.Trainer(accelerator="auto", devices=1, logger=False,
                         callbacks=[DetectionWriter(args.out, score_thr=args.score_thr)])
    trainer.predict(module, datamodule=MMDetDataModule(args.config, predict_folder=args.images),
                    return_predictions=False)
    print(f"wrote {args.out}/results.bbox.json and the drawn images")


if __name__ == "__main__":
    main()
