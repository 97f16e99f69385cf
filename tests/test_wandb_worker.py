"""BackgroundWorker alone, and the W&B callbacks' tables and uploads off the training loop on a real offline run."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.callbacks import MMDetWandbCallback
from mmdet_lightning.lightning_package import pl
from mmdet_lightning.wandb import tables
from mmdet_lightning.wandb.records import artifacts, find_run_file, read_records
from mmdet_lightning.wandb.worker import BackgroundWorker

ModelCheckpoint, WandbLogger = pl.callbacks.ModelCheckpoint, pl.loggers.WandbLogger


def _blocker(worker: BackgroundWorker) -> threading.Event:
    """Submit a job that runs until the returned event is set; returns once the job has started."""
    started, release = threading.Event(), threading.Event()

    def job() -> None:
        started.set()
        release.wait(10)

    worker.submit(job)
    assert started.wait(5)
    return release


def test_submit_does_not_wait_for_a_slow_job_and_drain_waits_for_all() -> None:
    worker = BackgroundWorker()
    done: list[int] = []
    release = threading.Event()
    worker.submit(lambda: (release.wait(10), done.append(1)))  # held until released: submit returned without it
    worker.submit(done.append, 2)
    assert done == []
    release.set()
    worker.drain()
    assert done == [1, 2]  # in submission order
    worker.close()


def test_the_queue_is_bounded() -> None:
    worker = BackgroundWorker(max_pending=2)
    release = _blocker(worker)  # running, not waiting
    worker.submit(time.sleep, 0)
    worker.submit(time.sleep, 0)  # two waiting: the queue is full
    returned = threading.Event()
    third = threading.Thread(target=lambda: (worker.submit(time.sleep, 0), returned.set()))
    third.start()
    assert not returned.wait(0.3), "the third waiting job must block submit"
    release.set()
    assert returned.wait(5)
    third.join()
    worker.close()


def test_a_failing_job_warns_and_later_jobs_still_run() -> None:
    worker = BackgroundWorker()
    done: list[str] = []

    def upload() -> None:
        raise OSError("disk on fire")

    with pytest.warns(UserWarning, match=r"background job .*upload failed \(OSError: disk on fire\); training goes on"):
        worker.submit(upload)
        worker.submit(done.append, "after")
        worker.drain()
    assert done == ["after"] and worker.failures == 1
    worker.close()


def test_background_false_runs_inline() -> None:
    worker = BackgroundWorker(background=False)
    caller: list[threading.Thread] = []
    worker.submit(lambda: caller.append(threading.current_thread()))
    assert caller == [threading.current_thread()]
    worker.drain()
    worker.close()


def test_close_stops_the_thread_and_the_worker_starts_again() -> None:
    worker = BackgroundWorker()
    done: list[int] = []
    worker.submit(done.append, 1)
    thread = worker._thread
    worker.close()
    assert done == [1] and thread is not None and not thread.is_alive()
    worker.submit(done.append, 2)
    worker.close()
    assert done == [1, 2]


def test_bad_max_pending() -> None:
    with pytest.raises(ValueError, match="`max_pending` to be a positive int, but got 0"):
        BackgroundWorker(max_pending=0)


class BatchStarted(pl.Callback):
    """Sets an event when the training batch at `step` starts."""

    def __init__(self, step: int) -> None:
        self.step, self.event = step, threading.Event()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            self.event.set()


@pytest.mark.slow
def test_training_goes_on_while_the_tables_are_built(shapes_config: Any, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A table job blocked until the next epoch's first batch starts does not hold that batch up.

    The job waits for the batch (up to 120 s) instead of sleeping a fixed time, so the check does not depend
    on how fast a loaded machine gets from validation to the next batch: had the loop waited for the job,
    the job would wait out its whole timeout and report that the batch never came.
    """
    jobs: list[tuple[bool, str]] = []
    write = tables.WandbDetectionTables._write_tables
    second_epoch = BatchStarted(step=3)  # 3 batches an epoch: the first batch of epoch 2

    def blocked_write(self: Any, *args: Any, **kwargs: Any) -> None:
        batch_came = second_epoch.event.wait(120)
        write(self, *args, **kwargs)
        jobs.append((batch_came, threading.current_thread().name))

    monkeypatch.setattr(tables.WandbDetectionTables, "_write_tables", blocked_write)
    cfg = shapes_config("shapes_retinanet.py", max_epochs=2)
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), project="mmdet-lightning-tests")
    callback = MMDetWandbCallback(interval=1, log_checkpoint=True, num_eval_images=4, bbox_score_thr=0.0)
    trainer = pl.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=2, accelerator="cpu", logger=logger,
                         callbacks=[second_epoch, ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_epochs=1,
                                                                  save_top_k=-1), callback],
                         enable_progress_bar=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    pl.seed_everything(0)
    trainer.fit(MMDetModule(cfg), datamodule=MMDetDataModule(cfg))
    logger.experiment.finish()

    assert len(jobs) == 2 and all(name != threading.main_thread().name for _, name in jobs)
    assert jobs[0][0], "the second epoch's first batch waited for the first epoch's tables"
    assert callback.worker._thread is None  # stopped at teardown

    records = read_records(find_run_file(tmp_path))
    names = [(a.name.split("_")[-1], sorted(a.aliases)) for a in artifacts(records)]
    assert names.count(("val", ["latest"])) == 1
    assert ("pred", ["epoch_1", "latest"]) in names and ("pred", ["epoch_2", "latest"]) in names
    assert [a for a in artifacts(records) if a.type == "model"] and len([n for n in names if n[0] == "model"]) == 2


def test_a_checkpoint_records_val_as_logged_only_once_it_is_in_the_run() -> None:
    """A checkpoint saved while the worker still builds `val`, then a crash, must not make the resumed run
    skip it (the SIGKILL test saw exactly that on a loaded CI machine)."""
    callback = tables.WandbDetectionTables(num_eval_images=2)
    logged: list[str] = []

    class Run:
        def log_artifact(self, artifact: Any, aliases: Any = None) -> None:
            logged.append(artifact.name)

    release = _blocker(callback.worker)
    callback.val_logged = True  # what `_log` does when it hands the tables over
    callback.worker.submit(callback._log_val_table, Run(), [], {}, [], None, False)
    assert callback.state_dict()["val_logged"] is False  # handed over, not in the run
    release.set()
    callback.worker.drain()
    assert logged == ["val"] and callback.state_dict()["val_logged"] is True
    callback.worker.close()

    resumed = tables.WandbDetectionTables(num_eval_images=2)
    resumed.load_state_dict({"indices": [0, 1], "val_logged": True})
    assert resumed.val_logged and resumed.state_dict()["val_logged"] is True


def test_preemption_drains_every_worker_before_its_checkpoint() -> None:
    from mmdet_lightning.wandb.worker import drain_all_workers

    worker, done = BackgroundWorker(), []
    release = _blocker(worker)
    worker.submit(done.append, "table")
    threading.Timer(0.2, release.set).start()
    drain_all_workers()
    assert done == ["table"]
    worker.close()


def test_jobs_use_one_pytorch_thread_and_leave_the_others_theirs() -> None:
    """A job's PyTorch ops run on one intra-op thread (no second OpenMP team beside the training threads); the
    calling thread's count, and the default of threads started later, stay as they were."""
    import torch

    before = torch.get_num_threads()
    seen: dict[str, int] = {}
    worker = BackgroundWorker()
    worker.submit(lambda: seen.update(job=torch.get_num_threads(), sum=int(torch.ones(1 << 16).sum())))
    worker.drain()
    later = threading.Thread(target=lambda: seen.update(later=torch.get_num_threads()))
    later.start()
    later.join()
    worker.close()
    assert seen == {"job": 1, "sum": 1 << 16, "later": before}
    assert torch.get_num_threads() == before
