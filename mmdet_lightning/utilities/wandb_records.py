"""Kept for ``mmdet_lightning.utilities.wandb_records``: see :mod:`mmdet_lightning.wandb.records`."""

from ..wandb.records import artifacts, find_run_file, history, read_records

__all__ = ["read_records", "history", "artifacts", "find_run_file"]
