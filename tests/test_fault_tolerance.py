"""Fault injection: SIGKILL mid-epoch and SIGTERM, then resume; the run ends as if nothing had happened.

Each training run is a subprocess of ``tests/helpers/fault_fit.py`` (Faster R-CNN, 2 epochs of 6 batches, whose
RPN/RCNN samplers and RandomFlip draw from the global generators, so an exact resume needs the random
states as well as the data position).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from mmdet_lightning.synthetic import ShapesConfig, make_shapes_dataset
from mmdet_lightning.wandb.records import artifacts, find_run_file, read_records

from .helpers.user_env import user_environment

SCRIPT = Path(__file__).parent / "helpers" / "fault_fit.py"


def _fit(out: Path, data_root: Path, *args: str, **environ: str) -> subprocess.CompletedProcess:
    """A training job in a fresh process, in a new user's environment (no WANDB_* variables: its own wandb
    service, no account; the script's WandbLogger(offline=True) decides the mode), stdin closed."""
    env = user_environment(out.parent / f"home_{out.name}", **environ)
    return subprocess.run([sys.executable, str(SCRIPT), str(out), str(data_root), *args], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("small_shapes"), ShapesConfig(num_train=12, num_val=4, seed=0))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, small_shapes: Path) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("uninterrupted")
    done = _fit(out, small_shapes)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out / "final.pt", weights_only=False)


def _assert_same_run_end(resumed: dict[str, Any], reference: dict[str, Any]) -> None:
    for key, value in reference["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=1e-6, atol=1e-7, msg=key)
    assert resumed["lrs"] == {k: reference["lrs"][k] for k in resumed["lrs"]}  # LR at each resumed iteration
    assert resumed["final_lr"] == reference["final_lr"]
    assert resumed["losses"] == {k: reference["losses"][k] for k in resumed["losses"]}
    assert resumed["batches"] == {k: reference["batches"][k] for k in resumed["batches"]}  # images and flips
    for key, value in reference["optimizer"]["state"].items():
        torch.testing.assert_close(resumed["optimizer"]["state"][key]["momentum_buffer"], value["momentum_buffer"])
    assert resumed["hub_info"] == reference["hub_info"]
    assert resumed["hub_scalar_counts"] == reference["hub_scalar_counts"]  # MessageHub history restored
    assert resumed["inner_count"] == reference["inner_count"] == 12


def _model_files(records: list) -> list[str]:
    return [e.path for a in artifacts(records) if a.type == "model" for e in a.manifest.contents]


@pytest.mark.slow
@pytest.mark.both_packages
def test_sigkill_mid_epoch_then_resume_ends_like_an_uninterrupted_run(
        small_shapes: Path, uninterrupted: dict[str, Any], tmp_path: Path) -> None:
    killed = _fit(tmp_path / "killed", small_shapes, "--kill-at", "9", "--wandb")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = tmp_path / "killed" / "ckpt" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (1, 8)  # 2 of the second epoch's 6 batches done
    assert checkpoint["MMDetDataModule"]["train_batches"]["batches_done"] == 2

    resumed = _fit(tmp_path / "resumed", small_shapes, "--resume", str(last), "--wandb")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = torch.load(tmp_path / "resumed" / "final.pt", weights_only=False)
    assert sorted(result["lrs"]) == [8, 9, 10, 11]
    _assert_same_run_end(result, uninterrupted)

    # the resumed process continues the same W&B run; nothing logged before is logged again
    before = read_records(find_run_file(tmp_path / "killed"), finished_within=0)  # SIGKILLed: no exit record
    after = read_records(find_run_file(tmp_path / "resumed"))
    run_ids = {r.run.run_id for r in before + after if r.WhichOneof("record_type") == "run"}
    assert len(run_ids) == 1
    assert set(_model_files(before)) & set(_model_files(after)) == set()
    assert _model_files(after) == ["iter_10.ckpt", "iter_12.ckpt"]
    # `val` reaches the run once: before the kill, or (when the worker had not logged it by the time of the
    # checkpoint: a loaded machine) from the resumed process, with the same contents
    tables_state = [state["WandbDetectionTables"] for state in checkpoint["callbacks"].values()
                    if "WandbDetectionTables" in state]
    assert len(tables_state) == 1
    vals_before = [a for a in artifacts(before) if a.name == "val"]
    vals_after = [a for a in artifacts(after) if a.name == "val"]
    if tables_state[0]["val_logged"]:
        assert len(vals_before) == 1 and vals_after == []  # the validation table is not uploaded twice
    else:
        assert len(vals_before) <= 1 and len(vals_after) == 1
        assert {a.digest for a in vals_before + vals_after} == {vals_after[0].digest}  # one W&B version
    preds = [sorted(a.aliases) for a in artifacts(after) if a.type == "evaluation"]
    assert preds == [["epoch_2", "latest"]]
    assert any(r.WhichOneof("record_type") == "exit" for r in after)


@pytest.mark.slow
def test_sigterm_leaves_an_uploaded_checkpoint_and_a_finished_run_then_resumes(
        small_shapes: Path, uninterrupted: dict[str, Any], tmp_path: Path) -> None:
    stopped = _fit(tmp_path / "stopped", small_shapes, "--sigterm-at", "3", "--wandb")
    assert stopped.returncode == 0, stopped.stderr[-3000:]  # Lightning's SIGTERMException is a SystemExit
    assert "Received SIGTERM" in stopped.stderr
    on_exception = tmp_path / "stopped" / "ckpt" / "on_exception.ckpt"
    assert torch.load(on_exception, weights_only=False)["global_step"] == 4  # the batch under way finished

    records = read_records(find_run_file(tmp_path / "stopped"))
    assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [1]  # finished
    models = [a for a in artifacts(records) if a.type == "model"]
    assert [e.path for e in models[-1].manifest.contents] == ["on_exception.ckpt"]
    assert sorted(models[-1].aliases) == ["interrupted", "latest"]
    assert json.loads(models[-1].metadata)["interrupted"] == "SIGTERMException"
    assert [e.path for a in models[:-1] for e in a.manifest.contents] == ["iter_2.ckpt", "iter_4.ckpt"]

    resumed = _fit(tmp_path / "resumed", small_shapes, "--resume", str(on_exception), "--wandb")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = torch.load(tmp_path / "resumed" / "final.pt", weights_only=False)
    assert sorted(result["lrs"]) == list(range(4, 12))
    _assert_same_run_end(result, uninterrupted)
    after = read_records(find_run_file(tmp_path / "resumed"))
    assert {r.run.run_id for r in after if r.WhichOneof("record_type") == "run"} == \
        {r.run.run_id for r in records if r.WhichOneof("record_type") == "run"}
    assert _model_files(after) == ["iter_6.ckpt", "iter_8.ckpt", "iter_10.ckpt", "iter_12.ckpt"]


@pytest.mark.slow
def test_unreachable_wandb_server_training_goes_on_offline(small_shapes: Path, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a local port where nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "outage"
    done = _fit(out, small_shapes, "--wandb", "--online", WANDB_MODE="online", PYTHONWARNINGS="default",
                WANDB_BASE_URL=f"http://127.0.0.1:{port}", WANDB_API_KEY="0" * 40)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"W&B: cannot reach http://127.0.0.1:{port}" in done.stderr
    assert "Upload it later with: wandb sync" in done.stdout + done.stderr
    written = sorted(p.name for p in (out / "ckpt").iterdir())
    assert written == ["iter_10.ckpt", "iter_12.ckpt", "iter_2.ckpt", "iter_4.ckpt", "iter_6.ckpt", "iter_8.ckpt",
                       "last.ckpt"]
    records = read_records(find_run_file(out))  # everything is in the offline run, for `wandb sync`
    assert _model_files(records) == [f"iter_{step}.ckpt" for step in (2, 4, 6, 8, 10, 12)]
    assert any(r.WhichOneof("record_type") == "exit" for r in records)


def test_cli_fit_ckpt_path_continues_the_wandb_run_of_the_checkpoint(tmp_path: Path) -> None:
    from jsonargparse import Namespace

    from mmdet_lightning.callbacks import wandb_run_id
    from mmdet_lightning.lightning_cli import _continue_wandb_run

    ckpt = tmp_path / "last.ckpt"
    torch.save({"callbacks": {"MMDetWandbCallback": {"run_id": "abc123", "WandbIntervalMetrics": {}}}}, ckpt)
    assert wandb_run_id(ckpt) == "abc123"
    logger = Namespace(class_path="mmdet_lightning.wandb.ResilientWandbLogger",
                       init_args=Namespace(id=None, version=None, project="p"))
    _continue_wandb_run(Namespace(logger=logger), wandb_run_id(ckpt))
    assert logger.init_args.id == "abc123"
    given = Namespace(class_path="pytorch_lightning.loggers.WandbLogger", init_args=Namespace(id="mine", version=None))
    _continue_wandb_run(Namespace(logger=[given]), wandb_run_id(ckpt))
    assert given.init_args.id == "mine"  # an id given on the command line wins


@pytest.mark.slow
@pytest.mark.parametrize("written, resumed_with",
                         [("pytorch_lightning", "lightning"), ("lightning", "pytorch_lightning")])
def test_a_checkpoint_resumes_under_the_other_lightning_package(
        small_shapes: Path, uninterrupted: dict[str, Any], tmp_path: Path, written: str, resumed_with: str) -> None:
    """A job written with ``import pytorch_lightning`` resumed by one that imports ``lightning`` (a user who
    switched packages between the two), and back: the run ends as the uninterrupted one."""
    killed = _fit(tmp_path / "killed", small_shapes, "--kill-at", "9", MMDET_LIGHTNING_PACKAGE=written)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    last = tmp_path / "killed" / "ckpt" / "last.ckpt"
    resumed = _fit(tmp_path / "resumed", small_shapes, "--resume", str(last), MMDET_LIGHTNING_PACKAGE=resumed_with)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = torch.load(tmp_path / "resumed" / "final.pt", weights_only=False)
    expected = {"lightning": "lightning.pytorch", "pytorch_lightning": "pytorch_lightning"}[resumed_with]
    assert result["package"] == expected
    assert sorted(result["lrs"]) == [8, 9, 10, 11]
    _assert_same_run_end(result, uninterrupted)
