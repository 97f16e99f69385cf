"""The language model of grounding detectors (GLIP, Grounding DINO): loaded as mmdet loads it, checked first.

mmdet's ``BertModel`` loads ``lang_model_name`` (``model.language_model.name``) through ``transformers``'
``AutoTokenizer`` / ``BertModel.from_pretrained``: a Hugging Face name (downloaded once into the Hugging Face
cache) or a local folder written by ``save_pretrained``. :func:`load_tokenizer` does that load before the
model is built, so that a name that cannot be loaded (no network, a typo) stops with the fix named instead of
a traceback from inside mmdet's registry; :func:`check_prompt` checks a prompt against the tokenizer.

:func:`make_tiny_bert` writes a small BERT with random weights and a vocabulary of the given words, for tests and
the synthetic demo (nothing downloaded). Command line::

    python -m mmdet_lightning.language_model --out data/shapes/tiny_bert
"""

from __future__ import annotations

import argparse
import functools
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["LanguageModelError", "load_tokenizer", "language_model_name", "prompt_phrases", "check_prompt",
           "make_tiny_bert", "TINY_BERT_WORDS"]

#: the words of :func:`make_tiny_bert`'s default vocabulary: the synthetic shapes' classes and a few more
TINY_BERT_WORDS: tuple[str, ...] = ("circle", "square", "triangle", "disc", "ring", "box", "shape", "round",
                                    "red", "green", "blue", "a", "the", "and", "of")
_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_INSTALL_HINT = "Hint: install the grounding extra: pip install 'mmdet-lightning[grounding]' (transformers)."


class LanguageModelError(ValueError):
    """The language model of a grounding config cannot be loaded, or a prompt does not fit its tokenizer.

    Example::
        >>> issubclass(LanguageModelError, ValueError)
        True
    """


def language_model_name(model_cfg: Any) -> str | None:
    """``model.language_model.name`` of a grounding config (its ``lang_model_name``), or None.

    Example::
        >>> language_model_name({"type": "GroundingDINO", "language_model": {"type": "BertModel", "name": "x"}})
        'x'
        >>> language_model_name({"type": "FasterRCNN"}) is None
        True
    """
    language_model = model_cfg.get("language_model") if hasattr(model_cfg, "get") else None
    if not language_model:
        return None
    return str(language_model.get("name", "bert-base-uncased"))


@functools.lru_cache(maxsize=8)
def load_tokenizer(name: str) -> Any:
    """The tokenizer of language model ``name``, loaded as mmdet's ``BertModel`` loads it
    (``AutoTokenizer.from_pretrained``); its model's config is read too, so that a folder without weights'
    config fails here. Cached by name.

    A local folder or a model already in the Hugging Face cache is loaded without the network
    (``local_files_only=True``). Otherwise the Hub is asked only when it answers within a few seconds: offline,
    a name that is not there (a typo) fails at once instead of after transformers' retries (about 25 s).

    Raises:
        LanguageModelError: transformers is not installed, or ``name`` cannot be loaded; the message names
            ``lang_model_name`` and how to point it at a local copy or the Hugging Face cache.
    """
    try:
        from transformers import AutoConfig, AutoTokenizer
    except ImportError as err:
        raise LanguageModelError(f"The config's language model `{name}` needs `transformers`, which is not "
                                 f"installed ({err}).\n{_INSTALL_HINT}") from err

    def load(local_files_only: bool) -> Any:
        AutoConfig.from_pretrained(name, local_files_only=local_files_only)
        return AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)

    try:
        try:
            return load(local_files_only=True)
        except Exception as local_err:
            hub = _unreachable_hub() if not Path(name).is_dir() else None
            if Path(name).is_dir() or hub is not None:
                raise LanguageModelError(f"{_first_line(local_err)}{f' ({hub})' if hub else ''}") from local_err
            return load(local_files_only=False)
    except Exception as err:  # OSError, HFValidationError, ValueError: transformers' ways to say "not found"
        raise LanguageModelError(
            f"The config's language model cannot be loaded: lang_model_name (model.language_model.name) = {name!r}: "
            f"{_first_line(err)}\nHint: point `lang_model_name` at a local folder holding the model as transformers' "
            "save_pretrained writes it (config.json, vocab.txt or tokenizer.json, the weights), e.g. "
            "--cfg-options model.language_model.name=/models/bert-base-uncased; or download the model once into "
            "the Hugging Face cache on a machine with network (`huggingface-cli download bert-base-uncased`, "
            "HF_HOME to choose the cache) and set HF_HUB_OFFLINE=1 where there is none; check the spelling of "
            "the name."
        ) from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _unreachable_hub(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face Hub cannot be asked (``HF_HUB_OFFLINE``, no answer within ``timeout`` seconds), or
    None when it answers."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    try:
        import requests

        requests.head(constants.ENDPOINT, timeout=timeout)
    except Exception as err:  # no network, no name resolution, a timeout
        return f"{constants.ENDPOINT} cannot be reached: {type(err).__name__}"
    return None


def prompt_phrases(text: str | Sequence[str]) -> list[str]:
    """The phrases of a prompt: ``"disc . ring ."`` (mmdet's `` . ``-separated form) or a list of phrases.

    Raises:
        LanguageModelError: the prompt holds no phrase.

    Example::
        >>> prompt_phrases("disc . red ring ."), prompt_phrases(["disc", " ring "])
        (['disc', 'red ring'], ['disc', 'ring'])
        >>> prompt_phrases(" . ")
        Traceback (most recent call last):
        ...
        mmdet_lightning.language_model.LanguageModelError: The prompt ' . ' holds no phrase...
    """
    parts: Iterable[Any] = text.split(".") if isinstance(text, str) else text
    phrases = [str(part).strip() for part in parts]
    if isinstance(text, str):
        phrases = [phrase for phrase in phrases if phrase]
    if not phrases or not all(phrases):
        raise LanguageModelError(
            f"The prompt {text!r} holds no phrase{'' if not phrases else ' (an empty phrase in the list)'}.\n"
            "Hint: give the phrases to detect, separated by ' . ' (\"disc . ring .\") or as a list "
            "([\"disc\", \"ring\"]).")
    return phrases


def check_prompt(tokenizer: Any, text: str | Sequence[str], where: str = "the prompt") -> list[str]:
    """The phrases of ``text`` (:func:`prompt_phrases`), each checked to split into tokens of ``tokenizer``'s
    vocabulary: a word that only becomes the unknown token (``[UNK]``) would match nothing.

    Raises:
        LanguageModelError: an empty prompt, or the words the tokenizer cannot split, named.
    """
    phrases = prompt_phrases(text)
    unknown = getattr(tokenizer, "unk_token", None)
    bad = []
    for phrase in phrases:
        for word in re.findall(r"\w+|[^\w\s]", phrase):
            if unknown is not None and unknown in tokenizer.tokenize(word):
                bad.append(word)
    if bad:
        raise LanguageModelError(
            f"{where[0].upper() + where[1:]} {phrases} has words that the language model's tokenizer cannot split "
            f"(they become {unknown}, which matches nothing): {sorted(set(bad))}.\nHint: use words of its "
            "vocabulary (its vocab.txt / tokenizer.json), or a language model whose vocabulary has them "
            "(`lang_model_name`).")
    return phrases


def make_tiny_bert(folder: str | Path, words: Sequence[str] = TINY_BERT_WORDS, hidden_size: int = 32,
                   seed: int = 0) -> Path:
    """Write a small BERT (one layer, random weights from ``seed``) with a vocabulary of ``words`` (lower case)
    and ``.`` / ``?`` / ``,`` to ``folder``, as ``save_pretrained`` writes it; a config's ``lang_model_name``
    can point at it. A folder already written is kept. Returns the folder."""
    folder = Path(folder)
    if (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file():
        return folder
    try:
        import torch
        from transformers import BertConfig, BertModel, BertTokenizerFast
    except ImportError as err:
        raise LanguageModelError(f"make_tiny_bert needs `transformers` ({err}).\n{_INSTALL_HINT}") from err
    folder.mkdir(parents=True, exist_ok=True)
    vocabulary = list(dict.fromkeys([*_SPECIAL_TOKENS, ".", "?", ",", *(w.lower() for w in words)]))
    (folder / "vocab.txt").write_text("\n".join(vocabulary) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocabulary), hidden_size=hidden_size, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=2 * hidden_size, max_position_embeddings=512)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    return folder


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m mmdet_lightning.language_model --out data/shapes/tiny_bert``: write :func:`make_tiny_bert`."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", default="data/shapes/tiny_bert", help="folder to write (default: %(default)s)")
    parser.add_argument("--words", nargs="*", default=list(TINY_BERT_WORDS), help="the vocabulary's words")
    args = parser.parse_args(argv)
    print(make_tiny_bert(args.out, args.words))


if __name__ == "__main__":
    main()
