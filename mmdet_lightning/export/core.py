"""``export_onnx``: a trained mmdet detector, pre- and post-processing included, as one ONNX graph."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ExportError

__all__ = ["export_onnx", "deploy_pipeline", "class_names", "load_for_export", "INPUT_NAMES"]

INPUT_NAMES = ("image", "img_shape", "scale_factor")
_SKIPPED_STEPS = ("LoadImageFromFile", "LoadAnnotations", "PackDetInputs", "LoadPanopticAnnotations")
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area", "lanczos")


def _steps(cfg: Any) -> list[Any]:
    """The test pipeline of a config: ``test_dataloader`` (else ``val_dataloader``) dataset's, else
    ``test_pipeline``."""
    for key in ("test_dataloader", "val_dataloader"):
        dataset = (cfg.get(key) or {}).get("dataset")
        while isinstance(dataset, Mapping) and "pipeline" not in dataset and "dataset" in dataset:
            dataset = dataset["dataset"]
        if isinstance(dataset, Mapping) and dataset.get("pipeline"):
            return list(dataset["pipeline"])
    if cfg.get("test_pipeline"):
        return list(cfg["test_pipeline"])
    raise ExportError("the config has no test pipeline (test_dataloader.dataset.pipeline or test_pipeline)",
                      op="test_pipeline")


def deploy_pipeline(cfg: Any) -> list[dict[str, Any]]:
    """The config's test pipeline as the deploy package runs it (``Resize``, ``FixShapeResize``, ``Pad``);
    :class:`ExportError` for a step with no deploy form.

    Example::
        >>> deploy_pipeline({"test_pipeline": [dict(type="LoadImageFromFile"),
        ...                  dict(type="Resize", scale=(1333, 800), keep_ratio=True), dict(type="PackDetInputs")]})
        [{'type': 'Resize', 'scale': [1333, 800], 'keep_ratio': True, 'interpolation': 'bilinear'}]
    """
    out: list[dict[str, Any]] = []
    for step in _steps(cfg):
        kind = str(step.get("type", "")).split(".")[-1]
        if kind in _SKIPPED_STEPS:
            if kind == "LoadImageFromFile" and step.get("color_type", "color") != "color":
                raise ExportError(f"LoadImageFromFile with color_type={step['color_type']!r} has no deploy form "
                                  "(only 'color')", op="LoadImageFromFile")
            if kind == "LoadImageFromFile" and step.get("imdecode_backend", "cv2") != "cv2":
                raise ExportError("LoadImageFromFile with an imdecode_backend other than cv2 has no deploy form",
                                  op="LoadImageFromFile")
            continue
        interpolation = step.get("interpolation", "bilinear")
        if kind in ("Resize", "FixShapeResize") and interpolation not in _INTERPOLATIONS:
            raise ExportError(f"{kind} with interpolation {interpolation!r} has no deploy form", op=kind)
        if kind in ("Resize", "FixShapeResize") and step.get("backend", "cv2") != "cv2":
            raise ExportError(f"{kind} with backend {step['backend']!r} has no deploy form (only cv2)", op=kind)
        if kind == "Resize":
            if step.get("scale") is None:
                raise ExportError("Resize by scale_factor has no deploy form (give `scale`)", op="Resize")
            scale = step["scale"]
            scale = [int(scale), int(scale)] if isinstance(scale, (int, float)) else [int(s) for s in scale]
            out.append({"type": "Resize", "scale": scale, "keep_ratio": bool(step.get("keep_ratio", False)),
                        "interpolation": interpolation})
        elif kind == "FixShapeResize":
            out.append({"type": "FixShapeResize", "width": int(step["width"]), "height": int(step["height"]),
                        "keep_ratio": bool(step.get("keep_ratio", False)), "interpolation": interpolation})
        elif kind == "Pad":
            if step.get("padding_mode", "constant") != "constant":
                raise ExportError(f"Pad with padding_mode={step['padding_mode']!r} has no deploy form", op="Pad")
            pad_val = step.get("pad_val", dict(img=0, seg=255))
            pad_val = pad_val.get("img", 0) if isinstance(pad_val, Mapping) else pad_val
            out.append({"type": "Pad", "size": list(step["size"]) if step.get("size") else None,
                        "size_divisor": step.get("size_divisor"), "pad_to_square": bool(step.get("pad_to_square")),
                        "pad_val": list(pad_val) if isinstance(pad_val, (list, tuple)) else pad_val})
        else:
            raise ExportError(f"test pipeline step {kind} has no deploy form (deploy runs LoadImageFromFile, "
                              "Resize, FixShapeResize, Pad)", op=kind)
    return out


def class_names(cfg: Any, detector: nn.Module | None = None) -> list[str]:
    """The class names: the detector's ``dataset_meta``, the config's dataset ``metainfo``, else the dataset
    type's own ``METAINFO``."""
    meta = getattr(detector, "dataset_meta", None) or {}
    if meta.get("classes"):
        return [str(c) for c in meta["classes"]]
    for key in ("test_dataloader", "val_dataloader", "train_dataloader"):
        dataset = (cfg.get(key) or {}).get("dataset") or {}
        while isinstance(dataset, Mapping) and "metainfo" not in dataset and "dataset" in dataset:
            dataset = dataset["dataset"]
        classes = ((dataset or {}).get("metainfo") or {}).get("classes")
        if classes:
            return [str(c) for c in classes]
        if dataset.get("type"):
            from mmdet.registry import DATASETS

            cls = DATASETS.get(dataset["type"]) if isinstance(dataset["type"], str) else dataset["type"]
            classes = (getattr(cls, "METAINFO", None) or {}).get("classes")
            if classes:
                return [str(c) for c in classes]
    return []


def _resolve(module: Any, config: Any) -> tuple[nn.Module, Any]:
    detector = getattr(module, "model", None)
    cfg = config if config is not None else getattr(module, "cfg", None)
    if detector is None or not hasattr(detector, "data_preprocessor"):
        detector = module
    if not hasattr(detector, "data_preprocessor") or not hasattr(detector, "extract_feat"):
        raise ExportError(f"expected an MMDetModule or an mmdet detector, got {type(module).__name__}")
    if cfg is None:
        raise ExportError("a bare mmdet detector needs `config=` (its test pipeline goes into the file)")
    if not isinstance(cfg, Mapping) and not hasattr(cfg, "get"):
        from ..config import load_config

        cfg = load_config(cfg)
    return detector, cfg


def _sample_size(pipeline: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """(h, w) of a square image after the pipeline: the size a graph is traced (or fixed) at by default."""
    height = width = 256
    for step in pipeline:
        if step["type"] == "Resize":
            if step["keep_ratio"]:
                height = width = min(step["scale"])
            else:
                width, height = step["scale"]
        elif step["type"] == "FixShapeResize":
            width, height = step["width"], step["height"]
        elif step["type"] == "Pad" and step.get("size"):
            width, height = step["size"]
    return int(height), int(width)


def export_onnx(module: Any, path: str | os.PathLike, input_size: Sequence[int] | None = None,
                config: Any = None, classes: Sequence[str] | None = None, opset_version: int = 18,
                check: bool = True) -> Path:
    """Export a detector, pre- and post-processing included, to one ONNX file at ``path``.

    The graph: channel order, normalisation and padding of the data preprocessor, backbone, neck, heads and
    post-processing (box decoding, score threshold, NMS, top-k; per-box masks for Mask R-CNN) with the config's
    ``test_cfg``. Inputs: ``image`` (float32 ``(1, 3, H, W)``, the test pipeline's output, channels as loaded:
    BGR, padded at the bottom and right to a multiple of the data preprocessor's ``pad_size_divisor`` with the
    metadata's ``pad_value``, the pixel value that normalises to 0, as the preprocessor pads), ``img_shape``
    (int64 ``[h, w]``) and ``scale_factor`` (float32 ``[w, h]``, ``[1, 1]`` for boxes
    in the input's coordinates); outputs ``boxes``, ``scores``, ``labels`` (and ``masks``: ``(N, M, M)`` mask
    probabilities of each box's class). The test pipeline and class names go into the file's metadata, for
    :class:`mmdet_lightning.deploy.OnnxDetector`.

    Args:
        module: an ``MMDetModule`` or an mmdet detector (then pass ``config``).
        path: the ``.onnx`` file to write; written whole or not at all.
        input_size: ``(height, width)`` for a fixed input size; None (default) for any size.
        config: the mmdet config (path, dict or ``Config``) when ``module`` is a bare detector.
        classes: class names to store (default: the detector's ``dataset_meta``, else the config's).
        opset_version: ONNX opset (>= 16, for ``RoiAlign``'s half-pixel mode).
        check: load the written graph in onnxruntime and run it once before the file is moved into place.

    Returns:
        ``path``.

    Raises:
        ExportError: a model family, op, pipeline step or config without an export form, or a failed export;
            naming the family and the op. Nothing is written then.
    """
    from .families import check_exportable, describe_family
    from .graphs import build_graph
    from .ops import export_friendly_ops, onnx_translations

    detector, cfg = _resolve(module, config)
    family = describe_family(detector)
    try:
        check_exportable(detector)
        pipeline = deploy_pipeline(cfg)
    except ExportError as error:
        raise error.with_family(family) from None
    if opset_version < 16:
        raise ExportError(f"opset {opset_version} has no half-pixel RoiAlign: use 16 or later", family=family,
                          op="RoiAlign")
    path = Path(path)
    fixed = input_size is not None
    # a dynamic graph is traced at a size where no feature map is 1 pixel and height != width, so that
    # nothing is specialised to the sample
    height, width = (int(input_size[0]), int(input_size[1])) if fixed else (320, 416)
    names = list(classes) if classes is not None else class_names(cfg, detector)

    was_training = detector.training
    detector.eval()
    try:
        with export_friendly_ops(), torch.no_grad():
            try:
                graph = build_graph(detector).eval()
            except ExportError as error:
                raise error.with_family(family) from None
            image = torch.rand(1, 3, height, width) * 255
            args = (image, torch.tensor([height, width], dtype=torch.int64), torch.ones(2, dtype=torch.float32))
            output_names = ["boxes", "scores", "labels"] + (["masks"] if getattr(graph, "with_mask", False) else [])
            divisor = max(int(graph.pad_size_divisor), 1)
            try:
                try:
                    exported = _torch_export(graph, args, None if fixed else _dynamic_shapes(divisor))
                except Exception as error:
                    # a network that needs sizes of a multiple of its largest stride (a PAFPN upsamples and
                    # concatenates; mmdet fails on other sizes too): torch.export says which, trace with it
                    multiple = _required_multiple(error)
                    if fixed or multiple is None or multiple % divisor:
                        raise
                    divisor = multiple
                    exported = _torch_export(graph, args, _dynamic_shapes(divisor))
                program = torch.onnx.export(
                    exported, args, None, dynamo=True, input_names=list(INPUT_NAMES), output_names=output_names,
                    opset_version=opset_version, custom_translation_table=onnx_translations(),
                    external_data=False, optimize=True, verbose=False)
            except ExportError as error:
                raise error.with_family(family) from None
            except Exception as error:  # torch.export / ONNX translation failures
                raise ExportError(_export_failure(error), family=family, op=_failed_op(error)) from error
        proto = program.model_proto
    finally:
        detector.train(was_training)

    metadata = _metadata(detector, cfg, graph, pipeline, names, fixed, (height, width), opset_version, divisor)
    return _write(proto, path, metadata, family, args if check else None)


def _dynamic_shapes(divisor: int) -> dict[str, Any]:
    """Any height and width that are multiples of ``divisor`` (the client pads to it, with what normalises to 0,
    as mmdet's data preprocessor pads); multiples let necks that upsample and concatenate (PAFPN) trace."""
    if divisor > 1:
        dims = {2: divisor * torch.export.Dim("height_blocks", min=1, max=8192 // divisor),
                3: divisor * torch.export.Dim("width_blocks", min=1, max=8192 // divisor)}
    else:
        dims = {2: torch.export.Dim("height", min=16, max=8192), 3: torch.export.Dim("width", min=16, max=8192)}
    return {"image": dims, "img_shape": None, "scale_factor": None}


def _required_multiple(error: BaseException) -> int | None:
    """The size multiple torch.export's constraint report suggests (``height = 32*_height``), if any."""
    import re

    text = str(error) + str(error.__cause__ or "")
    found = {int(m) for m in re.findall(r"(?:height|width) = (\d+)\*_(?:height|width)", text)}
    return max(found) if found else None


def _torch_export(graph: nn.Module, args: tuple[Any, ...], dynamic_shapes: Any) -> Any:
    """``torch.export.export`` of the graph (non-strict). With a dynamic input size, sizes are traced
    "size-oblivious": a feature map may be 1 pixel high or wide at run time (small images, the coarsest
    levels) without the trace assuming >= 2 and specialising; failures raise here rather than fall back to a
    specialised graph."""
    import torch.fx.experimental._config as fx_config

    if dynamic_shapes is None:
        return torch.export.export(graph, args, strict=False)
    with fx_config.patch(backed_size_oblivious=True):
        return torch.export.export(graph, args, dynamic_shapes=dynamic_shapes, strict=False)


def _export_failure(error: BaseException) -> str:
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    summary = text.split("## Exception summary", 1)
    if len(summary) == 2:  # torch.onnx's report: the cause is in its summary
        text = summary[1].split("(Refer to the full stack trace", 1)[0]
    cause = error.__cause__
    if len(summary) != 2 and cause is not None:
        text = f"{type(cause).__name__}: {cause}"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return f"torch.onnx.export (dynamo) failed: {' '.join(lines)[:800]}"


def _failed_op(error: BaseException) -> str | None:
    import re

    text = str(error)
    match = re.search(r"(aten::\w+|aten\.\w+|mmcv::\w+|torch\.ops\.\w+\.\w+|mmdet_lightning::\w+)", text)
    return match.group(1) if match else None


def _metadata(detector: nn.Module, cfg: Any, graph: nn.Module, pipeline: list[dict[str, Any]],
              classes: list[str], fixed: bool, size: tuple[int, int], opset_version: int,
              size_divisor: int) -> dict[str, Any]:
    import mmdet

    pre = detector.data_preprocessor
    mean = pre.mean.flatten().tolist() if getattr(pre, "_enable_normalize", False) else [0.0, 0.0, 0.0]
    if getattr(graph, "bgr_to_rgb", False):
        mean = mean[::-1]  # the input is BGR: the value that normalises to 0, in input channel order
    test_cfg = getattr(detector, "test_cfg", None) or {}
    rcnn = test_cfg.get("rcnn", test_cfg) if hasattr(test_cfg, "get") else {}
    return {
        "format_version": 1,
        "model": type(detector).__name__,
        "family": getattr(graph, "family_name", None) or type(graph).__name__,
        "task": "instance_segmentation" if getattr(graph, "with_mask", False) else "detection",
        "classes": classes,
        "pipeline": pipeline,
        "channel_order": "bgr",
        "input_size": list(size) if fixed else None,
        "pad_value": mean,
        "size_divisor": int(size_divisor),
        "mask_thr_binary": float(rcnn.get("mask_thr_binary", 0.5)) if hasattr(rcnn, "get") else 0.5,
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}, mmdet {mmdet.__version__}, "
                    f"opset {opset_version}",
    }


def _write(proto: Any, path: Path, metadata: Mapping[str, Any], family: str, check_args: Any) -> Path:
    """Add the metadata, check the graph, and move it to ``path`` only when all went well."""
    import onnx

    from ..deploy.detector import METADATA_KEY

    del proto.metadata_props[:]
    proto.metadata_props.append(onnx.StringStringEntryProto(key=METADATA_KEY, value=json.dumps(dict(metadata))))
    proto.producer_name = "mmdet_lightning"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=str(path.parent))
    os.close(fd)
    try:
        onnx.save_model(proto, tmp)
        onnx.checker.check_model(tmp)
        if check_args is not None:
            import onnxruntime as ort

            session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
            feeds = {name: value.numpy() for name, value in zip(INPUT_NAMES, check_args, strict=False)}
            session.run(None, feeds)
        os.replace(tmp, path)
    except Exception as error:
        raise ExportError(f"the exported graph does not load or run in onnxruntime: {type(error).__name__}: "
                          f"{str(error).strip()[:500]}", family=family) from error
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_for_export(config: Any, checkpoint: str | os.PathLike | None, cfg_options: Any = None,
                    trust: bool = False) -> Any:
    """An ``MMDetModule`` of ``config`` with every tensor of ``checkpoint`` loaded; :class:`ExportError` when the
    checkpoint does not fit the config (tensors missing, extra or of another shape), before anything is built."""
    from .. import MMDetModule
    from ..checkpoint import load_detector_weights

    module = MMDetModule(config, cfg_options=cfg_options)
    if checkpoint is None:
        return module
    report = load_detector_weights(module.model, checkpoint, trust=trust)
    if report.missing or report.unexpected or report.mismatched:
        from .families import describe_family

        raise ExportError(f"checkpoint {str(checkpoint)!r} does not fit the config: {report.summary()}",
                          family=describe_family(module.model))
    return module
