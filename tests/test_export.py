"""ONNX export (``mmdet_lightning.export``) and onnxruntime inference (``mmdet_lightning.deploy``) against PyTorch.

For every family: export the whole detector, run the file with ``OnnxDetector`` on the validation images (and
on non-square copies that the pipeline resizes by different factors per axis), and compare with mmdet's own
``test_step`` on the same files: same labels, boxes within 1e-3 of the image size, scores within 1e-4, mask
IoU >= 0.99, and the same COCO mAP within 1e-3.

Weights: Faster R-CNN is the session's trained checkpoint and Mask R-CNN starts from it (its mask head is
made decisive, see ``_liven``); RetinaNet and RTMDet would need minutes of CPU training to detect anything, so
their heads get fixed random weights that give many distinct, overlapping detections (what stresses the
score threshold, top-k and NMS), and their mAP comparison is of those detections.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from mmdet_lightning import MMDetModule
from mmdet_lightning.config import load_config, replace_data_root

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "mmdet"
BOX_TOL, SCORE_TOL, MASK_IOU = 1e-3, 1e-4, 0.99
MAP_TOL = 1e-3

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _liven(detector: nn.Module, seed: int = 0, heads: tuple[str, ...] = ("bbox_head", "rpn_head", "roi_head")) -> None:
    """Fixed random head weights of a trained net's scale, classification biases -1 (``make_heads_decisive``)."""
    from mmdet_lightning.export.reference import make_heads_decisive

    make_heads_decisive(detector, seed, heads)


def _calibrate_batch_norm(detector: nn.Module, images: list[Path]) -> None:
    """Set every BatchNorm's running statistics from ``images`` (a forward pass in training mode with
    cumulative averages): an untrained RTMDet's features otherwise shrink to nothing through its eval-mode BNs."""
    norms = [m for m in detector.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    pre = detector.data_preprocessor
    batch = torch.stack([torch.from_numpy(cv2.imread(str(p))).permute(2, 0, 1).float() for p in images])
    if getattr(pre, "_channel_conversion", False):
        batch = batch[:, [2, 1, 0]]
    batch = (batch - pre.mean.view(1, -1, 1, 1)) / pre.std.view(1, -1, 1, 1)
    detector.train()
    with torch.no_grad():
        detector.bbox_head(detector.extract_feat(batch))
        for name, module in detector.named_modules():  # scores spread over (0, 1), not saturated at 1
            if ".rtm_cls." in name and isinstance(module, nn.Conv2d):
                module.weight.mul_(0.2)
    detector.eval()


@pytest.fixture(scope="module")
def check_images(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The 8 validation images and 3 non-square copies (resized by the pipeline with other factors per axis)."""
    images = sorted((shapes_root / "val").glob("*.png"))
    folder = tmp_path_factory.mktemp("non_square")
    extra = []
    for index, size in enumerate([(150, 200), (77, 300), (333, 90)]):
        path = folder / f"resized_{index}.png"
        cv2.imwrite(str(path), cv2.resize(cv2.imread(str(images[index])), size))
        extra.append(path)
    return images + extra


def _module(shapes_root: Path, name: str, load_from: Path | None = None, liven: tuple[str, ...] | None = None,
            calibrate: bool = False) -> MMDetModule:
    cfg = replace_data_root(load_config(CONFIGS / name), shapes_root)
    torch.manual_seed(0)
    module = MMDetModule(cfg, load_from=str(load_from) if load_from else None)
    if liven:
        _liven(module.model, heads=liven)
    if calibrate:
        _calibrate_batch_norm(module.model, sorted((shapes_root / "train").glob("*.png"))[:16])
    return module.eval()


_EXPORTS: dict[str, Any] = {}


def _exported(key: str, make: Callable[[], MMDetModule], tmp_path_factory: pytest.TempPathFactory,
              **kwargs: Any) -> tuple[MMDetModule, Path]:
    """One export per model and settings for the whole session."""
    if key not in _EXPORTS:
        from mmdet_lightning.export import export_onnx

        module = make()
        path = export_onnx(module, tmp_path_factory.mktemp("onnx") / f"{key}.onnx", **kwargs)
        _EXPORTS[key] = (module, path)
    return _EXPORTS[key]


def _check_equal(module: MMDetModule, path: Path, images: list[Path]) -> dict[str, float]:
    from mmdet_lightning.deploy import OnnxDetector
    from mmdet_lightning.export.reference import TorchPredictor, compare_detections

    reference, detector = TorchPredictor(module), OnnxDetector(path)
    worst = {"box_diff": 0.0, "score_diff": 0.0, "mask_iou_min": 1.0, "detections": 0}
    for image in images:
        expected, found = reference(image), detector(image)
        report = compare_detections(expected, found, cv2.imread(str(image)).shape[:2], BOX_TOL, SCORE_TOL)
        assert report["matched"], (image.name, report, expected, found)
        if "mask_iou_min" in report:
            assert report["mask_iou_min"] >= MASK_IOU, (image.name, report)
            worst["mask_iou_min"] = min(worst["mask_iou_min"], report["mask_iou_min"])
        worst["box_diff"] = max(worst["box_diff"], report["box_diff"])
        worst["score_diff"] = max(worst["score_diff"], report["score_diff"])
        worst["detections"] += len(expected["scores"])
    assert worst["detections"] > 0, "nothing detected: the comparison would be empty"
    print(f"{path.name}: {worst}")
    return worst


def _coco_map(ann_file: Path, results: list[dict[str, Any]], iou_type: str) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:
        return 0.0
    gt = COCO(str(ann_file))
    evaluator = COCOeval(gt, gt.loadRes(results), iou_type)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return float(evaluator.stats[0])


def _check_map(module: MMDetModule, path: Path, shapes_root: Path, tmp_path: Path) -> dict[str, float]:
    """COCO mAP of ``predict_folder``'s JSON (onnxruntime) and of PyTorch's predictions, on the val images."""
    from pycocotools import mask as mask_utils

    from mmdet_lightning.deploy import predict_folder
    from mmdet_lightning.export.reference import TorchPredictor

    ann_file = shapes_root / "annotations" / "instances_val.json"
    summary = predict_folder(path, shapes_root / "val", tmp_path / "onnx", ann_file=ann_file)
    onnx_boxes = json.loads(Path(summary["results"]).read_text())
    coco = json.loads(ann_file.read_text())
    ids = {image["file_name"].split("/")[-1]: image["id"] for image in coco["images"]}
    cat_ids = [c["id"] for c in coco["categories"]]
    reference = TorchPredictor(module)
    torch_boxes, torch_segm = [], []
    for image in sorted((shapes_root / "val").glob("*.png")):
        found = reference(image)
        for index, (box, label, score) in enumerate(zip(found["boxes"].tolist(), found["labels"].tolist(),
                                                        found["scores"].tolist(), strict=False)):
            item = {"image_id": ids[image.name], "category_id": cat_ids[label], "score": score}
            torch_boxes.append({**item, "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
            if "masks" in found:
                rle = mask_utils.encode(np.asfortranarray(found["masks"][index].astype(np.uint8)))
                torch_segm.append({**item, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    maps = {"bbox": (_coco_map(ann_file, onnx_boxes, "bbox"), _coco_map(ann_file, torch_boxes, "bbox"))}
    if torch_segm:
        onnx_segm = json.loads((tmp_path / "onnx" / "results.segm.json").read_text())
        maps["segm"] = (_coco_map(ann_file, onnx_segm, "segm"), _coco_map(ann_file, torch_segm, "segm"))
    for kind, (onnx_map, torch_map) in maps.items():
        assert abs(onnx_map - torch_map) <= MAP_TOL, (kind, onnx_map, torch_map)
    print(f"{path.name}: mAP (onnxruntime, PyTorch) {maps}")
    return {k: v[0] for k, v in maps.items()}


# ---------------------------------------------------------------------------------------------- the four models
def test_retinanet_export_matches_pytorch(shapes_root: Path, check_images: list[Path],
                                          tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    module, path = _exported("retinanet", lambda: _module(shapes_root, "shapes_retinanet.py", liven=("bbox_head",)),
                             tmp_path_factory)
    _check_equal(module, path, check_images)
    _check_map(module, path, shapes_root, tmp_path)


@pytest.mark.slow
def test_rtmdet_export_matches_pytorch(shapes_root: Path, check_images: list[Path],
                                       tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    module, path = _exported("rtmdet", lambda: _module(shapes_root, "shapes_rtmdet.py", liven=("bbox_head",),
                                                       calibrate=True), tmp_path_factory)
    # this RTMDet config pads to no size divisor, and its PAFPN cannot concatenate the levels of an input whose
    # sides are not multiples of 32 (mmdet fails on them too): the 128x128 images and the 96x128 copy
    _check_equal(module, path, check_images[:9])
    _check_map(module, path, shapes_root, tmp_path)


@pytest.mark.slow
def test_faster_rcnn_export_matches_pytorch(shapes_root: Path, check_images: list[Path], trained_checkpoint: Path,
                                            tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    module, path = _exported("faster_rcnn", lambda: _module(shapes_root, "shapes_faster_rcnn.py", trained_checkpoint),
                             tmp_path_factory)
    _check_equal(module, path, check_images)
    maps = _check_map(module, path, shapes_root, tmp_path)
    assert maps["bbox"] > 0.05  # a trained model: the equality is of real detections


@pytest.mark.slow
def test_mask_rcnn_export_matches_pytorch(shapes_root: Path, check_images: list[Path], trained_checkpoint: Path,
                                          tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    make = lambda: _module(shapes_root, "shapes_mask_rcnn.py", trained_checkpoint,  # noqa: E731
                           liven=("roi_head.mask_head",))
    module, path = _exported("mask_rcnn", make, tmp_path_factory)
    _check_equal(module, path, check_images)
    maps = _check_map(module, path, shapes_root, tmp_path)
    assert maps["bbox"] > 0.05


@pytest.mark.slow
def test_fixed_input_size(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A fixed 128x128 graph: the images the pipeline resizes to 128x128 match PyTorch exactly; smaller ones are
    padded by OnnxDetector with the value that normalises to 0."""
    from mmdet_lightning.deploy import OnnxDetector

    module, path = _exported("retinanet_fixed",
                             lambda: _module(shapes_root, "shapes_retinanet.py", liven=("bbox_head",)),
                             tmp_path_factory, input_size=(128, 128))
    detector = OnnxDetector(path)
    assert detector.input_size == [128, 128]
    assert [i.shape for i in detector.session.get_inputs()][0] == [1, 3, 128, 128]
    _check_equal(module, path, sorted((shapes_root / "val").glob("*.png"))[:4])
    found = detector(np.zeros((64, 100, 3), np.uint8))  # resized to 128x82, padded to 128x128: runs
    assert found.boxes.shape[1] == 4


# ---------------------------------------------------------------------------------------------- command line
@pytest.mark.slow
def test_cli_export_then_predict_writes_the_predict_json(shapes_root: Path, trained_checkpoint: Path,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``mmdet-lightning export`` then ``mmdet-lightning predict model.onnx FOLDER``: the COCO results JSON of
    ``mmdet-lightning predict --data.predict_folder`` (same ids, categories and keys), with the same numbers."""
    from mmdet_lightning.cli import run

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "faster_rcnn.py"
    cfg = replace_data_root(load_config(CONFIGS / "shapes_faster_rcnn.py"), shapes_root)
    cfg.dump(str(config))
    output = tmp_path / "model.onnx"
    run(["export", str(config), "--ckpt_path", str(trained_checkpoint), "--output", str(output)])
    assert output.is_file() and not list(tmp_path.glob("*.partial"))
    run(["predict", str(output), str(shapes_root / "val"), "--output", str(tmp_path / "deploy")])
    deployed = json.loads((tmp_path / "deploy" / "results.bbox.json").read_text())

    run(["predict", str(config), "--model.load_from", str(trained_checkpoint),
         "--data.predict_folder", str(shapes_root / "val"), "--trainer.default_root_dir", str(tmp_path / "torch"),
         "--trainer.logger", "false", "--trainer.enable_progress_bar", "false"])
    lightning = json.loads((tmp_path / "torch" / "predictions" / "results.bbox.json").read_text())
    assert deployed and len(deployed) == len(lightning)
    assert {tuple(sorted(r)) for r in deployed} == {tuple(sorted(r)) for r in lightning}
    key = lambda r: (r["image_id"], -r["score"])  # noqa: E731
    for ours, theirs in zip(sorted(deployed, key=key), sorted(lightning, key=key), strict=False):
        assert (ours["image_id"], ours["category_id"]) == (theirs["image_id"], theirs["category_id"])
        assert abs(ours["score"] - theirs["score"]) <= SCORE_TOL
        assert np.abs(np.subtract(ours["bbox"], theirs["bbox"])).max() <= BOX_TOL * 128


# ---------------------------------------------------------------------------------------------- bad input
def _no_onnx_left(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if ".onnx" in p.name], list(folder.iterdir())


def test_checkpoint_that_does_not_fit_the_config(shapes_root: Path, tmp_path: Path) -> None:
    from mmdet_lightning.export import ExportError, load_for_export

    cfg = replace_data_root(load_config(CONFIGS / "shapes_retinanet.py"), shapes_root)
    other = MMDetModule(replace_data_root(load_config(CONFIGS / "shapes_faster_rcnn.py"), shapes_root))
    checkpoint = tmp_path / "faster_rcnn.pth"
    torch.save({"state_dict": other.model.state_dict()}, checkpoint)
    with pytest.raises(ExportError, match=r"Cannot export RetinaNet \(one-stage, RetinaHead\): checkpoint .* does "
                                          r"not fit the config: .*missing from the checkpoint"):
        load_for_export(cfg, checkpoint)
    from mmdet_lightning.cli import run

    with pytest.raises(SystemExit, match="does not fit the config"):
        run(["export", str(CONFIGS / "shapes_retinanet.py"), "--ckpt_path", str(checkpoint),
             "--output", str(tmp_path / "model.onnx")])
    _no_onnx_left(tmp_path)


def test_op_without_export_form_names_family_and_op(shapes_root: Path, tmp_path: Path) -> None:
    from mmdet_lightning.export import ExportError, export_onnx

    cfg = replace_data_root(load_config(CONFIGS / "shapes_retinanet.py"), shapes_root)
    cfg.model.neck.conv_cfg = dict(type="SAC")  # switchable atrous convolutions (DetectoRS) in the FPN
    with pytest.raises(ExportError, match=r"Cannot export RetinaNet \(one-stage, RetinaHead\): mmcv op "
                                          r"SAConv2d .* \[op: SAConv2d\]"):
        export_onnx(MMDetModule(cfg), tmp_path / "model.onnx")
    _no_onnx_left(tmp_path)


def test_head_and_pipeline_without_export_form(shapes_root: Path, tmp_path: Path) -> None:
    from mmdet_lightning.export import ExportError, export_onnx

    cfg = replace_data_root(load_config(CONFIGS / "shapes_faster_rcnn.py"), shapes_root)
    cfg.model.test_cfg.rcnn.nms = dict(type="soft_nms", iou_threshold=0.5)
    module = MMDetModule(cfg)
    with pytest.raises(ExportError, match=r"Cannot export FasterRCNN \(two-stage, RPNHead \+ StandardRoIHead\): "
                                          r"NMS of type .soft_nms. in test_cfg.rcnn .* \[op: soft_nms\]"):
        export_onnx(module, tmp_path / "model.onnx")
    cfg = replace_data_root(load_config(CONFIGS / "shapes_retinanet.py"), shapes_root)
    cfg.test_dataloader.dataset.pipeline.insert(2, dict(type="RandomFlip", prob=1.0))
    with pytest.raises(ExportError, match=r"test pipeline step RandomFlip has no deploy form .*\[op: RandomFlip\]"):
        export_onnx(MMDetModule(cfg), tmp_path / "model.onnx")
    import mmdet

    cfg = load_config(Path(mmdet.__file__).parent / ".mim" / "configs" / "yolox" / "yolox_tiny_8xb8-300e_coco.py")
    with pytest.raises(ExportError, match=r"Cannot export YOLOX \(one-stage, YOLOXHead\): head YOLOXHead "
                                          r"post-processes in its own way"):
        export_onnx(MMDetModule(cfg), tmp_path / "model.onnx")
    _no_onnx_left(tmp_path)


def test_failed_onnxruntime_check_leaves_no_file(shapes_root: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An export that fails after the graph is built (here: onnxruntime cannot load it) writes nothing."""
    from mmdet_lightning.export import ExportError, core

    def broken(proto: Any, path: Path, metadata: Any, family: str, check_args: Any) -> Path:
        del proto.graph.node[0].input[:]  # an invalid graph
        return original(proto, path, metadata, family, check_args)

    original = core._write
    monkeypatch.setattr(core, "_write", broken)
    monkeypatch.setattr(core.torch.onnx, "export", _tiny_onnx_export)
    monkeypatch.setattr(core, "_torch_export", lambda *args: None)
    module = _module(shapes_root, "shapes_retinanet.py")
    with pytest.raises(ExportError, match=r"Cannot export RetinaNet .*: the exported graph does not load"):
        core.export_onnx(module, tmp_path / "model.onnx")
    _no_onnx_left(tmp_path)


def _tiny_onnx_export(*args: Any, **kwargs: Any) -> Any:
    """A stand-in for torch.onnx.export (the real one is tested above): a one-node program."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["scale_factor"], ["boxes"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("scale_factor", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [2])])

    class Program:
        model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])

    assert onnx is not None
    return Program()


# ---------------------------------------------------------------------------------------------- serving machine
def _deploy_venv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with only onnxruntime, NumPy and OpenCV (headless), made once and kept in pytest's
    cache (``.pytest_cache/d/deploy-venv``) so that later runs reuse it."""
    import os
    import subprocess
    import sys

    cache = getattr(request.config, "cache", None)
    root = Path(cache.mkdir("deploy-venv")) if cache is not None else tmp_path_factory.mktemp("deploy-venv")
    python = root / "venv" / ("Scripts" if os.name == "nt" else "bin") / "python"
    marker = root / "ready"
    if not marker.exists():
        base = getattr(sys, "_base_executable", None) or sys.executable
        subprocess.run([base, "-m", "venv", "--clear", str(root / "venv")], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        "onnxruntime", "numpy", "opencv-python-headless"], check=True)
        marker.write_text("onnxruntime numpy opencv-python-headless\n")
    return python


@pytest.mark.slow
def test_onnx_detector_in_a_venv_with_only_onnxruntime_numpy_opencv(
        shapes_root: Path, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        tmp_path: Path) -> None:
    """The serving machine: no torch, mmcv, mmdet or Lightning installed, the package's source on the path;
    ``OnnxDetector`` and ``python -m mmdet_lightning.deploy predict`` give what they give beside PyTorch."""
    import subprocess

    from mmdet_lightning.deploy import OnnxDetector, predict_folder

    python = _deploy_venv(request, tmp_path_factory)
    _, path = _exported("retinanet", lambda: _module(shapes_root, "shapes_retinanet.py", liven=("bbox_head",)),
                        tmp_path_factory)
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    check = ("import importlib.util, sys\n"
             "missing = [m for m in ('torch', 'mmcv', 'mmdet', 'mmengine', 'pytorch_lightning', 'lightning') "
             "if importlib.util.find_spec(m) is not None]\n"
             "assert not missing, missing\n"
             "from mmdet_lightning.deploy import OnnxDetector\n"
             f"found = OnnxDetector({str(path)!r})({str(sorted((shapes_root / 'val').glob('*.png'))[0])!r})\n"
             "print(len(found), found.class_names[:3])\n")
    out = subprocess.run([str(python), "-c", check], env=env, check=True, capture_output=True, text=True)
    expected = OnnxDetector(path)(sorted((shapes_root / "val").glob("*.png"))[0])
    assert out.stdout.split()[0] == str(len(expected)) and len(expected) > 0
    subprocess.run([str(python), "-m", "mmdet_lightning.deploy", "predict", str(path), str(shapes_root / "val"),
                    "--output", str(tmp_path / "fresh")], env=env, check=True)
    predict_folder(path, shapes_root / "val", tmp_path / "here")
    fresh = json.loads((tmp_path / "fresh" / "results.bbox.json").read_text())
    here = json.loads((tmp_path / "here" / "results.bbox.json").read_text())
    assert len(fresh) == len(here) > 0
    for a, b in zip(fresh, here, strict=False):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert abs(a["score"] - b["score"]) <= SCORE_TOL
        assert np.abs(np.subtract(a["bbox"], b["bbox"])).max() <= BOX_TOL * 128


# ---------------------------------------------------------------------------------------------- more families
def _zoo_module(shapes_root: Path, family: str, config: str, depth: int = 18) -> MMDetModule:
    """An mmdet 3.3 config adapted to the shapes data as the model-zoo sweep does, with a ResNet-``depth``
    backbone (fast), initial weights and decisive heads."""
    import mmdet
    from mmengine.config import Config

    from mmdet_lightning.model_zoo import adapt_to_dataset
    from mmdet_lightning.synthetic import CLASSES

    cfg = Config.fromfile(str(Path(mmdet.__file__).parent / ".mim" / "configs" / family / config))
    cfg = adapt_to_dataset(cfg, shapes_root, CLASSES)
    cfg.model.backbone.depth = depth
    cfg.model.neck.in_channels = [64, 128, 256, 512]
    torch.manual_seed(0)
    module = MMDetModule(cfg)
    _liven(module.model)
    return module.eval()


@pytest.mark.slow
@pytest.mark.parametrize("config", ["cascade-rcnn_r50_fpn_1x_coco.py", "cascade-mask-rcnn_r50_fpn_1x_coco.py"])
def test_cascade_rcnn_export_matches_pytorch(shapes_root: Path, check_images: list[Path], config: str,
                                             tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """Cascade (Mask) R-CNN: three stages refining the rois, logits averaged, masks merged over the stages."""
    module, path = _exported(config, lambda: _zoo_module(shapes_root, "cascade_rcnn", config), tmp_path_factory)
    _check_equal(module, path, check_images)
    _check_map(module, path, shapes_root, tmp_path)


@pytest.mark.slow
def test_gfl_export_matches_pytorch(shapes_root: Path, check_images: list[Path],
                                    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """GFL (``GFLHead._predict_by_feat_single``: box distances as the integral of a distribution, from the
    anchors' centres), which LD's head shares."""
    module, path = _exported("gfl", lambda: _zoo_module(shapes_root, "gfl", "gfl_r50_fpn_1x_coco.py"),
                             tmp_path_factory)
    _check_equal(module, path, check_images)
    _check_map(module, path, shapes_root, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("conv", ["DCN", "DCNv2"])
def test_deformable_convolutions_export_matches_pytorch(shapes_root: Path, check_images: list[Path], conv: str,
                                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Deformable convolutions v1 and v2 (RetinaNet's FPN convolutions as ``DCN`` / ``DCNv2``), with offsets
    (and masks) from random offset convolutions, so that every sample falls between pixels."""

    def make() -> MMDetModule:
        cfg = replace_data_root(load_config(CONFIGS / "shapes_retinanet.py"), shapes_root)
        cfg.model.neck.conv_cfg = dict(type=conv)
        cfg.model.neck.norm_cfg = dict(type="GN", num_groups=8)  # no bias: DCN (v1) has none
        cfg.model.neck.add_extra_convs = False  # extra levels by max-pooling: mmcv's kernel refuses maps under 3x3
        torch.manual_seed(0)
        module = MMDetModule(cfg)
        _liven(module.model, heads=("bbox_head",))
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            offsets = [m for n, m in module.model.named_modules() if n.endswith("conv_offset")]
            assert offsets, "no deformable convolution in the model"
            for layer in offsets:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.02)
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * 0.5)
        return module.eval()

    module, path = _exported(f"retinanet_{conv}", make, tmp_path_factory)
    # the 8 validation images: mmcv's kernel (the PyTorch side) refuses feature maps smaller than the kernel ("input
    # image is smaller than kernel"), which the non-square copies have at the coarsest level
    _check_equal(module, path, check_images[:8])
