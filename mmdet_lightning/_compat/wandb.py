"""Private attributes of wandb's runs, media and artifacts."""

from __future__ import annotations

from typing import Any

from ._core import private_attr, private_method

__all__ = ["artifact_add_file_with_digest", "artifact_client_id", "artifact_register_local_path",
           "boxes_without_checks", "image_from_image", "image_masks", "media_local_path", "run_is_finished"]

_PACKAGE = "wandb"


def run_is_finished(run: Any) -> bool:
    """Whether ``run.finish()`` has run (a ``wandb.Run``'s ``_is_finished``). A disabled run (``mode="disabled"``:
    wandb's ``NoopRun``, ``run.disabled``) has no such state and takes nothing: True."""
    if getattr(run, "disabled", False) is True:
        return True
    return private_attr(run, "_is_finished", _PACKAGE, bool)


def image_masks(image: Any) -> dict[str, Any]:
    """The mask layers of a ``wandb.Image`` by name (``_masks``); empty for an image without masks (wandb
    keeps None there then)."""
    return private_attr(image, "_masks", _PACKAGE, (dict, type(None))) or {}


def media_local_path(media: Any) -> str | None:
    """The local file behind a ``wandb.Image`` / mask (``_path``; None before the media has a file)."""
    return private_attr(media, "_path", _PACKAGE, (str, type(None)))


def artifact_client_id(artifact: Any) -> str:
    """The id of a ``wandb.Artifact`` in this client, before it is logged (``_client_id``), the host part of a
    ``wandb-client-artifact://<client id>/<entry>`` reference."""
    return private_attr(artifact, "_client_id", _PACKAGE, str)


def artifact_register_local_path(artifact: Any, local_path: str, entry: Any) -> None:
    """Make ``artifact`` treat ``local_path`` as already added, as ``entry`` (``_added_local_paths``), so that
    serialising a table reuses that entry instead of uploading the file again."""
    private_attr(artifact, "_added_local_paths", _PACKAGE, dict)[local_path] = entry


def artifact_add_file_with_digest(artifact: Any, local_path: str, name: str, md5_b64: str | None) -> Any:
    """Add the file ``local_path`` to ``artifact`` as ``name`` (``policy="immutable"``, ``skip_cache=True``) with
    its MD5 (base64, as W&B's manifests hold it) already known, so that W&B neither reads the file to hash it
    nor, online, copies it into its cache after the upload. ``Artifact.add_file`` has no digest argument: this
    calls the ``_add_local_file`` it delegates to. Without a digest, or for an artifact whose manifest uses
    another digest algorithm than MD5 (``digest_algorithm``, wandb >= 0.31), the public ``add_file`` hashes it.
    Returns the manifest entry."""
    algorithm = str(getattr(getattr(artifact, "digest_algorithm", None), "value", "MD5"))
    if md5_b64 is None or not algorithm.upper().endswith("MD5"):
        return artifact.add_file(local_path, name=name, policy="immutable", skip_cache=True)
    add_local_file = private_method(artifact, "_add_local_file", _PACKAGE)
    return add_local_file(name, local_path, digest=md5_b64, skip_cache=True, policy="immutable")


def boxes_without_checks(box_data: list[dict[str, Any]], key: str, class_labels: dict[int, str]) -> Any:
    """A ``wandb.data_types.BoundingBoxes2D`` of ``box_data`` as its constructor makes it, without what the
    constructor does per box set and a table never uses: validating every box in Python, and writing and
    SHA-256-hashing a ``.boxes2D.json`` file (a table inlines the boxes). For box data that is valid by
    construction (``mmdet_lightning.wandb.media.box_data``). Sets the attributes the constructor sets
    (``_val``, ``_key``, ``_class_labels``) on an object whose ``Media`` part is initialised as usual."""
    from wandb.sdk.data_types.base_types.media import Media
    from wandb.sdk.data_types.helper_types.bounding_boxes_2d import BoundingBoxes2D

    boxes: Any = BoundingBoxes2D.__new__(BoundingBoxes2D)
    Media.__init__(boxes)
    boxes._val = box_data
    boxes._key = key
    boxes._class_labels = class_labels
    return boxes


class _KnownSize:
    """Stands in for a ``wandb.Image``'s decoded PIL image where only its ``size`` is read."""

    def __init__(self, width: int, height: int) -> None:
        self.size = (width, height)


def image_from_image(base: Any, **kwargs: Any) -> Any:
    """``wandb.Image(base, **kwargs)`` (``boxes``, ``masks``, ``classes``: the same file, other overlays) without
    decoding ``base``'s file again: wandb's constructor loads the image only to read a width and height that
    ``base`` holds. The decoded image it would read (``_image``, None once a file-backed image has freed it)
    stands in as one that has only that size, for the constructor's call alone."""
    import wandb

    width, height = private_attr(base, "_width", _PACKAGE), private_attr(base, "_height", _PACKAGE)
    if private_attr(base, "_image", _PACKAGE) is not None or not isinstance(width, int) or not isinstance(height, int):
        return wandb.Image(base, **kwargs)
    base._image = _KnownSize(width, height)
    try:
        image = wandb.Image(base, **kwargs)
    finally:
        base._image = None
    private_attr(image, "_image", _PACKAGE)  # freed by the constructor, as for a decoded image
    return image
