"""Private attributes of wandb's runs, media and artifacts."""

from __future__ import annotations

from typing import Any

from ._core import private_attr

__all__ = ["artifact_client_id", "artifact_register_local_path", "image_masks", "media_local_path",
           "run_is_finished"]

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
