"""Prompting a grounding detector with one's own text: the ``SetTextPrompt`` transform that puts the prompt on
every sample, as mmdet's ``DetInferencer`` does (``text``, ``custom_entities=True``).

``MMDetDataModule(text=...)`` (``mmdet-lightning predict --text "disc . ring ."``) adds it to the predict
pipeline; the phrases are checked against the language model's tokenizer when the data module is made
(:func:`mmdet_lightning.language_model.check_prompt`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmcv.transforms import BaseTransform
from mmdet.registry import TRANSFORMS

from .language_model import LanguageModelError, check_prompt, language_model_name, load_tokenizer, prompt_phrases

__all__ = ["SetTextPrompt", "checked_prompt"]


@TRANSFORMS.register_module()
class SetTextPrompt(BaseTransform):
    """Set ``text`` (the phrases) and ``custom_entities=True`` on a sample, replacing the dataset's classes as its
    prompt; ``PackDetInputs`` must keep ``text`` and ``custom_entities`` in its ``meta_keys`` (mmdet's grounding
    configs do). Registered in mmdet's ``TRANSFORMS`` as ``SetTextPrompt``.

    Example::
        >>> SetTextPrompt("disc . ring .")({"img_id": 0})
        {'img_id': 0, 'text': ('disc', 'ring'), 'custom_entities': True}
    """

    def __init__(self, text: str | Sequence[str]) -> None:
        self.phrases = tuple(prompt_phrases(text))

    def transform(self, results: dict[str, Any]) -> dict[str, Any]:
        results["text"] = self.phrases
        results["custom_entities"] = True
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(text={self.phrases!r})"


def checked_prompt(cfg: Any, text: str | Sequence[str]) -> list[str]:
    """The phrases of ``text`` for the grounding model of ``cfg``, checked against its language model's tokenizer.

    Raises:
        LanguageModelError: the config's model takes no text, the language model cannot be loaded, the prompt is
            empty or has a word the tokenizer cannot split.
    """
    name = language_model_name(cfg.model)
    if name is None:
        raise LanguageModelError(
            f"A text prompt ({text!r}) was given, but the config's model `{cfg.model.get('type')}` takes no text.\n"
            "Hint: prompts are for grounding detectors (GLIP, GroundingDINO): leave `text` out for this model.")
    phrases = prompt_phrases(text)  # an empty prompt is named before the language model is loaded
    return check_prompt(load_tokenizer(name), phrases)
