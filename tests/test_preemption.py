"""Preemption under DDP: a signal at any moment stops both processes at the same batch with a checkpoint, and
the resumed run ends as an uninterrupted one, in the same W&B run. Two CPU processes (gloo), Lightning's launcher,
each run a fresh process as a user's job is (``tests/helpers/preempt_fit.py``)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from mmdet_lightning.synthetic import ShapesConfig, make_shapes_dataset
from mmdet_lightning.wandb.records import artifacts, read_records

from .helpers.user_env import explain, run_as_user

SCRIPT = Path(__file__).parent / "helpers" / "preempt_fit.py"
SLURM_JOB = Path(__file__).parent / "helpers" / "slurm_job.py"
AGREEMENT = Path(__file__).parent / "helpers" / "preemption_agreement.py"


def _fit(out: Path, data_root: Path, *args: str) -> Any:
    out.mkdir(parents=True, exist_ok=True)
    return run_as_user(["python", str(SCRIPT), str(out), str(data_root), *args], cwd=out, timeout=600)


def _iterations(out: Path, rank: int = 0) -> dict[str, dict[int, float]]:
    merged: dict[str, dict[int, float]] = {"lrs": {}, "losses": {}}
    for part in ("first", "resumed"):
        path = out / f"rank{rank}.{part}.json"
        if path.exists():
            for key, values in json.loads(path.read_text()).items():
                if key in merged:
                    merged[key].update({int(k): v for k, v in values.items()})
    return merged


@pytest.fixture(scope="module")
def preempt_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("preempt_shapes"), ShapesConfig(num_train=24, num_val=4, seed=0))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, preempt_shapes: Path) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    done = _fit(out, preempt_shapes)
    assert done.returncode == 0, explain(done)
    return out


def _records(out: Path) -> list:
    return [r for path in sorted(out.glob("wandb/offline-run-*/run-*.wandb")) for r in read_records(path)]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("during, rank, at", [("train", 1, 1), ("val", 0, 3), ("save", 1, 3)],
                         ids=["mid-epoch-on-rank-1", "during-validation-on-rank-0", "during-a-checkpoint-write"])
def test_a_signal_stops_every_rank_at_one_batch_and_the_resume_ends_as_uninterrupted(
        preempt_shapes: Path, reference: Path, tmp_path: Path, during: str, rank: int, at: int) -> None:
    stopped = _fit(tmp_path, preempt_shapes, "--signal-at", str(at), "--signal-rank", str(rank), "--during", during)
    assert stopped.returncode == 0, explain(stopped)  # Lightning's SIGTERM exit (a SystemExit)
    assert "Received SIGTERM" in stopped.stderr + stopped.stdout
    assert not (tmp_path / "final.pt").exists()  # the fit did stop
    (hpc,) = tmp_path.glob("hpc_ckpt_*.ckpt")
    checkpoint = torch.load(hpc, weights_only=False)
    first = [_iterations(tmp_path, r) for r in (0, 1)]
    assert first[0]["lrs"].keys() == first[1]["lrs"].keys()  # both ranks trained the same batches, then stopped
    assert checkpoint["global_step"] == len(first[0]["lrs"]) < 8  # stopped before the end of the 8 batches

    resumed = _fit(tmp_path, preempt_shapes, "--resume")
    assert resumed.returncode == 0, explain(resumed)
    _assert_resumed_as_uninterrupted(tmp_path, reference)


def _assert_resumed_as_uninterrupted(out: Path, reference: Path) -> None:
    """The resumed run ends as the uninterrupted one (weights, optimizer, every LR and loss of both ranks), in one
    W&B run marked preempting, with every artifact once."""
    ours, theirs = torch.load(out / "final.pt", weights_only=False), torch.load(reference / "final.pt",
                                                                                 weights_only=False)
    for key, value in theirs["state_dict"].items():
        assert torch.equal(ours["state_dict"][key], value), key
    for a, b in zip(ours["optimizer"]["state"].values(), theirs["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in b)
    for r in (0, 1):
        assert _iterations(out, r) == _iterations(reference, r)  # every iteration's LR and loss, both ranks

    records = _records(out)
    assert len({r.run.run_id for r in records if r.WhichOneof("record_type") == "run"}) == 1
    assert any(r.WhichOneof("record_type") == "preempting" for r in records)
    models = [e.path for a in artifacts(records) if a.type == "model" for e in a.manifest.contents]
    assert len(models) == len(set(models))  # every checkpoint uploaded once
    assert [a.name for a in artifacts(records)].count("val") == 1


def _random_preemption(seed: int) -> tuple[str, int, int]:
    """(during, rank, iteration) of a signal: anywhere in the 8 iterations that leaves the two batches the ranks
    take to agree (mid-epoch, during the first validation or the first checkpoint write), from either rank."""
    rng = random.Random(seed)
    during = rng.choice(["train", "val", "save"])
    return during, rng.randrange(2), rng.randrange(5) if during == "train" else rng.randrange(4)


def _free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _job(launcher: str, out: Path, data_root: Path, *args: str) -> list[str]:
    """The command of a 2-process job: torchrun (``--standalone``) or the tasks of a SLURM-style job."""
    fit = [str(SCRIPT), str(out), str(data_root), *args]
    if launcher == "torchrun":
        return ["python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *fit]
    return ["python", str(SLURM_JOB), "2", _free_port(), "--", "python", *fit]


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("launcher, signal_name, send_to, seed", [
    ("torchrun", "SIGTERM", "parent", 5), ("torchrun", "SIGTERM", "parent", 9), ("slurm", "SIGUSR1", "group", 8)],
    ids=["torchrun-checkpoint-write", "torchrun-validation", "slurm-usr1-mid-epoch"])
def test_a_job_preempted_under_torchrun_or_slurm_resumes_as_uninterrupted(
        preempt_shapes: Path, reference: Path, tmp_path: Path, launcher: str, signal_name: str, send_to: str,
        seed: int) -> None:
    """The signal goes to the job as a cluster sends it: SIGTERM to the torchrun agent (which passes it on to every
    worker), SLURM's ``--signal=USR1@90`` to every task of the job, at a step drawn from ``seed``; every rank stops
    at one batch with Lightning's SIGTERM exit, rank 0 asks SLURM to requeue (``scontrol requeue``, here a script
    that records its arguments), and the same command resumes into the same W&B run as if nothing had happened."""
    during, rank, at = _random_preemption(seed)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    path = os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])

    signal_args = ("--signal-at", str(at), "--signal-rank", str(rank), "--during", during,
                   "--signal-name", signal_name, "--send-to", send_to)
    stopped = run_as_user(_job(launcher, tmp_path, preempt_shapes, *signal_args), cwd=tmp_path, timeout=600,
                          PATH=path)
    assert all((tmp_path / f"rank{r}.first.json").exists() for r in (0, 1)), explain(stopped)
    exceptions = [json.loads((tmp_path / f"rank{r}.first.json").read_text())["exception"] for r in (0, 1)]
    assert exceptions == ["SIGTERMException"] * 2, explain(stopped)  # every rank stopped, not killed
    (hpc,) = tmp_path.glob("hpc_ckpt_*.ckpt")
    first = [_iterations(tmp_path, r) for r in (0, 1)]
    assert first[0]["lrs"].keys() == first[1]["lrs"].keys()  # both ranks trained the same batches, then stopped
    assert torch.load(hpc, weights_only=False)["global_step"] == len(first[0]["lrs"]) < 8
    requeued = (tmp_path / "scontrol.log").read_text() if (tmp_path / "scontrol.log").exists() else ""
    assert requeued == ("requeue 4242\n" if signal_name == "SIGUSR1" else "")

    resumed = run_as_user(_job(launcher, tmp_path, preempt_shapes, "--resume"), cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, explain(resumed)
    _assert_resumed_as_uninterrupted(tmp_path, reference)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_lightning_per_step_broadcast_is_replaced(shapes_config: Any) -> None:
    from mmdet_lightning import MMDetModule
    from mmdet_lightning.engine.preemption import PreemptionHandler, lightning_has_sigterm_switch
    from mmdet_lightning.lightning_package import pl

    trainer = pl.Trainer(accelerator="cpu", logger=False, max_epochs=1)
    handler = PreemptionHandler()
    handler.setup(trainer, MMDetModule(shapes_config("shapes_retinanet.py")), "fit")
    assert lightning_has_sigterm_switch() or trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor() is None
    trainer._signal_connector._sigterm_notifier_fn(signal.SIGTERM, None)
    assert handler.requested == 1 and not trainer.received_sigterm  # recorded; the stop waits for the batch's end


@pytest.mark.parametrize("seconds, signal_rank, signal_batch", [(0.0, 1, 7), (0.2, 0, 50), (0.2, 1, 123)],
                         ids=["every-batch", "spaced-signal-on-rank-0", "spaced-signal-on-rank-1"])
def test_ranks_agree_at_one_batch_however_far_apart_the_agreements(
        tmp_path: Path, seconds: float, signal_rank: int, signal_batch: int) -> None:
    """The handler's own protocol on 2 gloo processes whose batches take 4 and 8 ms: both ranks take the same
    agreement interval (from the slower rank's step time) and decide the stop at the same batch, no later than
    one interval and the two batches of lag after the signal."""
    from mmdet_lightning.engine.preemption import PreemptionHandler

    done = run_as_user(["python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(AGREEMENT), str(tmp_path), str(seconds), str(signal_rank), str(signal_batch)],
                       cwd=tmp_path, timeout=300)
    assert done.returncode == 0, explain(done)
    ranks = [json.loads((tmp_path / f"agreement{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # the same schedule, and the same decision at the same batch
    decided, interval = ranks[0]["decided"], max(ranks[0]["intervals"])
    if seconds == 0:
        assert interval == 1
    else:  # 0.2 s at 8 ms (or more, on a busy machine) a batch: a few to 25 batches, not every batch
        assert 2 <= interval <= 26, ranks[0]["intervals"]
    assert signal_batch <= decided <= signal_batch + interval + PreemptionHandler.LAG


def test_a_handler_given_to_the_trainer_is_kept(shapes_config: Any) -> None:
    """``Trainer(callbacks=[PreemptionHandler(...)])`` sets its options: MMDetModule does not add a second."""
    from mmdet_lightning import MMDetModule
    from mmdet_lightning.engine.preemption import PreemptionHandler
    from mmdet_lightning.lightning_package import pl

    ours = PreemptionHandler(seconds_between_agreements=2.0)
    trainer = pl.Trainer(accelerator="cpu", logger=False, max_epochs=1, callbacks=[ours])
    module = MMDetModule(shapes_config("shapes_retinanet.py"))
    module.trainer = trainer
    assert not any(isinstance(c, PreemptionHandler) for c in module.configure_callbacks())
    module.trainer = pl.Trainer(accelerator="cpu", logger=False, max_epochs=1)
    assert sum(isinstance(c, PreemptionHandler) for c in module.configure_callbacks()) == 1
    with pytest.raises(ValueError, match="seconds_between_agreements"):
        PreemptionHandler(seconds_between_agreements=-1)


@pytest.mark.slow
def test_a_failed_checkpoint_write_on_rank_0_stops_every_rank(preempt_shapes: Path, tmp_path: Path) -> None:
    """Rank 0 writes, rank 1 waits at the barrier: the write error reaches both, nobody waits for a timeout."""
    from .test_disk_full import _small_filesystem

    with _small_filesystem(tmp_path / "full", 64 << 10) as folder:  # no room for one checkpoint
        done = _fit(tmp_path / "run", preempt_shapes, "--ckpt-dir", str(folder))
    assert done.returncode != 0 and "CheckpointWriteError" in done.stderr, explain(done)
    for rank in (0, 1):
        state = json.loads((tmp_path / "run" / f"rank{rank}.first.json").read_text())
        assert state["exception"] == "CheckpointWriteError" and len(state["lrs"]) == 4  # at the first epoch's end
