"""Grounding (open-vocabulary) detection: mmdet's ``GLIP`` and ``GroundingDINO`` (MM-Grounding-DINO is a
``GroundingDINO`` config), prompted with text.

The detectors score boxes against the tokens of a text prompt: with ``return_classes=True`` on a COCO-format
dataset the prompt is the class names (``"circle . square . triangle ."``) and the predictions' ``labels`` are
class indices, so mmdet's ``CocoMetric`` evaluates them as any detector's. Their heads' ``num_classes`` is not a
class count (Grounding DINO's is the text length, 256), so the class check compares the prompt with the
language model's limits instead. What this adds to detection:

- the language model (``lang_model_name``) and the prompt are checked before the model is built
  (:mod:`mmdet_lightning.language_model`): a model that cannot be loaded, an empty prompt or a word its
  tokenizer cannot split stop with the fix named;
- mmdet 3.3's ``RandomSamplingNegPos`` (the prompt sampling of MM-Grounding-DINO's ODVG fine-tuning) calls
  ``np.long``, which numpy 1.24 removed: :func:`fix_mmdet_text_transforms` gives it back to that module;
- predictions carry the phrase of each box (``pred_instances.label_names``, as mmdet's ``DetInferencer`` keeps
  them): the W&B tables and the prediction writer show the phrases, not the dataset's classes.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from .detection import DetectionTask, other_task

if TYPE_CHECKING:
    from ..wandb.media import Instances

__all__ = ["GroundingTask", "prediction_phrases", "prompt_text", "fix_mmdet_text_transforms"]

_GROUNDING = "grounding (open-vocabulary) detection"


class GroundingTask(DetectionTask):
    """``GLIP`` and ``GroundingDINO`` (and MM-Grounding-DINO): detection scored against a text prompt.

    Example::
        >>> GroundingTask.handles({"type": "GroundingDINO"}), GroundingTask.handles({"type": "FasterRCNN"})
        (True, False)
        >>> GroundingTask().name
        'grounding'
    """

    name: ClassVar[str] = "grounding"
    description: ClassVar[str] = "grounding (open-vocabulary) detection"

    def __init__(self) -> None:
        #: the prompt of the latest training batch (for the model artifacts' metadata)
        self.prompt: str | None = None

    @classmethod
    def handles(cls, model_cfg: Mapping[str, Any]) -> bool:
        return other_task(model_cfg) == _GROUNDING

    def losses(self, model: Any, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        samples = batch.get("data_samples") or []
        if samples:
            self.prompt = prompt_text(samples[0].metainfo.get("text"))
        return super().losses(model, batch)

    def artifact_metadata(self) -> dict[str, Any]:
        """``{"prompt": ...}``: the text the model was trained with (``"circle . square . triangle ."``)."""
        return {"prompt": self.prompt} if self.prompt else {}

    def check_config(self, cfg: Any) -> None:
        """The language model (``lang_model_name``) loads, and the datasets' classes (the training prompt) are
        words its tokenizer can split (:mod:`mmdet_lightning.language_model`): a ``LanguageModelError`` naming
        the fix otherwise, before anything is built."""
        from ..config import leaf_dataset_cfgs
        from ..language_model import check_prompt, language_model_name, load_tokenizer

        fix_mmdet_text_transforms()
        name = language_model_name(cfg.model)
        if name is None:
            return
        tokenizer = load_tokenizer(name)
        for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
            for dataset in leaf_dataset_cfgs((cfg.get(key) or {}).get("dataset", {})):
                classes = (dataset.get("metainfo") or {}).get("classes")
                if classes and dataset.get("return_classes"):
                    check_prompt(tokenizer, list(classes), where=f"the {key}'s classes (its prompt)")

    def class_counts(self, model: torch.nn.Module) -> dict[str, int]:
        """None: every head of a grounding model scores the tokens of the prompt (``GroundingDINOHead`` and its
        denoising query generator, GLIP's ``ATSSVLFusionHead``); their ``num_classes`` is the text length (256 in
        mmdet's configs), not a class count. The prompt is checked instead (:meth:`check_classes`)."""
        return {}

    def check_classes(self, model: torch.nn.Module, classes: Any, stage: str) -> None:
        """The dataset's classes are the prompt: each must be a phrase the model's tokenizer can split."""
        from ..language_model import check_prompt

        tokenizer = getattr(getattr(model, "language_model", None), "tokenizer", None)
        if tokenizer is not None:
            check_prompt(tokenizer, list(classes), where=f"the {stage} dataset's classes (the prompt)")

    def predicted_instances(self, sample: Any, score_thr: float) -> Instances | None:
        instances = super().predicted_instances(sample, score_thr)
        if instances is not None:
            instances.names = prediction_phrases(sample, score_thr)
            instances.prompt = prompt_text(sample.metainfo.get("text"))
        return instances


def prompt_text(text: str | Sequence[str] | None) -> str | None:
    """A sample's ``text`` as one prompt string: phrases (``return_classes``, a ``SetTextPrompt`` list) joined as
    mmdet joins them into a caption.

    Example::
        >>> prompt_text(("circle", "square")), prompt_text("disc . ring ."), prompt_text(None)
        ('circle . square .', 'disc . ring .', None)
    """
    if text is None or isinstance(text, str):
        return text
    return " . ".join(str(phrase) for phrase in text) + " ."


def prediction_phrases(sample: Any, score_thr: float = -1.0) -> list[str] | None:
    """The phrase of each prediction of ``sample`` with score > ``score_thr`` (mmdet's ``label_names``: the
    prompt's entity that each box matched), or None when the model did not name them."""
    pred = getattr(sample, "pred_instances", None)
    names: Sequence[str] | None = None if pred is None else pred.get("label_names")
    if pred is None or names is None:
        return None
    keep = (pred.scores > score_thr).cpu().tolist()
    return [str(name) for name, kept in zip(names, keep, strict=True) if kept]


class _NumpyWithLong(types.ModuleType):
    """numpy, with ``long`` (``int``, as numpy < 1.24 had it)."""

    long = int

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def fix_mmdet_text_transforms() -> None:
    """Make mmdet 3.3's grounding text transforms (``RandomSamplingNegPos``, the ODVG training prompts) work with
    numpy >= 1.24: their module calls ``np.long`` (``int`` before numpy removed it); it gets a numpy that has it.
    Nothing else changes; a no-op where ``np.long`` exists or mmdet no longer uses it. ``MMDetModule`` applies it
    for grounding configs; mmengine's ``Runner`` needs it too (call it before ``runner.train()``).

    Example::
        >>> fix_mmdet_text_transforms()
        >>> from mmdet.datasets.transforms import text_transformers
        >>> text_transformers.np.array([1], dtype=text_transformers.np.long).dtype.kind
        'i'
    """
    try:
        from mmdet.datasets.transforms import text_transformers
    except ImportError:  # transformers missing: mmdet's grounding modules say so when built
        return
    module_np = getattr(text_transformers, "np", None)
    if module_np is np and not hasattr(np, "long"):
        text_transformers.np = _NumpyWithLong("numpy")
