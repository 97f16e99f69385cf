"""The throttled progress bars: MMDetModule puts them in place of Lightning's default bar, keeps a bar of the
user's, skips updates that come too soon, and draws the count where training stops."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.callbacks import MMDetProgressBar, MMDetRichProgressBar
from mmdet_lightning.lightning_package import pl


def _fit(cfg: Any, tmp_path: Path, callbacks: list[pl.Callback], steps: int = 3) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=steps, limit_val_batches=0, accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_model_summary=False, callbacks=callbacks,
                         default_root_dir=str(tmp_path))
    trainer.fit(MMDetModule(cfg), datamodule=MMDetDataModule(cfg))
    return trainer


class UpdateCounter(pl.Callback):
    """How often the bar read the metrics (a host synchronisation on a GPU) and the bar's count at the end."""

    def __init__(self, bar: pl.callbacks.TQDMProgressBar) -> None:
        self.bar, self.updates, self.final_n = bar, 0, None
        original = bar.get_metrics

        def counted(*args: Any) -> Any:
            self.updates += 1
            return original(*args)

        bar.get_metrics = counted

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.final_n = self.bar.train_progress_bar.n


@pytest.mark.parametrize("default", ["tqdm", "rich"])
def test_default_bar_is_replaced_by_its_throttled_twin(shapes_config: Any, tmp_path: Path, default: str) -> None:
    bar = pl.callbacks.TQDMProgressBar() if default == "tqdm" else pl.callbacks.RichProgressBar()
    trainer = _fit(shapes_config("shapes_retinanet.py", batch_size=2), tmp_path, [bar], steps=2)
    bars = [c for c in trainer.callbacks if isinstance(c, pl.callbacks.ProgressBar)]
    assert [type(b) for b in bars] == [MMDetProgressBar if default == "tqdm" else MMDetRichProgressBar]


def test_a_configured_bar_is_kept(shapes_config: Any, tmp_path: Path) -> None:
    bar = pl.callbacks.TQDMProgressBar(refresh_rate=5)
    trainer = _fit(shapes_config("shapes_retinanet.py", batch_size=2), tmp_path, [bar], steps=2)
    assert trainer.progress_bar_callback is bar


def test_updates_are_throttled_and_the_last_count_is_drawn(shapes_config: Any, tmp_path: Path) -> None:
    # an hour between updates: only the first batch is drawn, then the count where max_steps stops it
    bar = MMDetProgressBar(min_interval=3600)
    bar.init_train_tqdm = _quiet(bar.init_train_tqdm)
    counter = UpdateCounter(bar)
    _fit(shapes_config("shapes_retinanet.py", batch_size=2), tmp_path, [bar, counter], steps=4)
    assert counter.final_n == 4  # 12 batches an epoch: stopped mid-epoch, between updates
    assert counter.updates == 3  # metrics read at the first batch, the epoch's end and the final count

    every_step = MMDetProgressBar(min_interval=0)
    every_step.init_train_tqdm = _quiet(every_step.init_train_tqdm)
    counter = UpdateCounter(every_step)
    _fit(shapes_config("shapes_retinanet.py", batch_size=2), tmp_path, [every_step, counter], steps=4)
    assert counter.final_n == 4 and counter.updates == 5  # each batch and the epoch's end, as Lightning's bar


def _quiet(init: Any) -> Any:
    def make() -> Any:
        bar = init()
        bar.fp = io.StringIO()
        return bar

    return make


def test_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="min_interval"):
        MMDetProgressBar(min_interval=-1)
    with pytest.raises(ValueError, match="min_interval"):
        MMDetRichProgressBar(min_interval=-0.5)
