"""Multi-node launches on one machine: 2 "nodes" x 1 CPU process (gloo) through torchrun's c10d rendezvous and
the way SLURM's ``srun`` starts them, running ``mmdet-lightning fit`` on a shipped YAML with the W&B callback.

Each run must give one W&B run with each artifact once, the iterations, data split and weights of 1 node x 2
processes, and a validation mAP equal to a single-process evaluation of its final checkpoint.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmdet_lightning import MMDetDataModule, MMDetModule
from mmdet_lightning.checkpoint import load_checkpoint_file
from mmdet_lightning.lightning_package import pl
from mmdet_lightning.wandb.records import artifacts, find_run_file, history, read_records

from .conftest import CONFIGS, REPO
from .helpers.user_env import explain, user_environment

YAML = REPO / "configs" / "lightning" / "shapes_faster_rcnn.yaml"
OUT = Path("work_dirs") / "shapes_faster_rcnn"  # the YAML's folder, relative to each run's working directory
LAUNCHER = Path(__file__).parent / "helpers" / "multinode_launch.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fit_args(shapes_root: Path, trained_checkpoint: Path, devices: int, num_nodes: int) -> list[str]:
    return ["fit", "--config", str(YAML), "--model.config", str(CONFIGS / "shapes_faster_rcnn.py"),
            "--model.data_root", str(shapes_root), "--model.load_from", str(trained_checkpoint),
            "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", str(devices),
            "--trainer.num_nodes", str(num_nodes), "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "2", "--trainer.enable_progress_bar", "false"]


def _start_nodes(commands: list[list[str]], cwd: Path) -> None:
    """Start the nodes' commands as a new user's processes (stdin closed, no WANDB_*), wait for all of them."""
    env = user_environment(cwd / "home", OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
    nodes = [subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for command in commands]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=420)[0])
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node, output in zip(nodes, outputs, strict=False):
        assert node.returncode == 0, explain(subprocess.CompletedProcess(node.args, node.returncode, output, ""))


def _cli() -> list[str]:
    return [sys.executable, "-m", "mmdet_lightning.cli"]


@pytest.fixture(scope="module")
def one_node_two_processes(shapes_root: Path, trained_checkpoint: Path,
                           tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: 1 node x 2 processes (Lightning starts the second one)."""
    cwd = tmp_path_factory.mktemp("one_node")
    _start_nodes([[*_cli(), *_fit_args(shapes_root, trained_checkpoint, devices=2, num_nodes=1)]], cwd)
    return cwd / OUT


def _check_like_one_node(out: Path, reference: Path, shapes_root: Path) -> None:
    records = read_records(find_run_file(out))  # exactly one W&B run (find_run_file fails on two)
    logged = artifacts(records)
    names = [(a.type, a.name.split("_")[-1], tuple(sorted(a.aliases))) for a in logged]
    assert sorted(names) == sorted(set(names)), names  # each artifact once
    assert {n[1] for n in names} >= {"model", "pred", "val"}

    ours, theirs = (load_checkpoint_file(p / "checkpoints" / "last.ckpt") for p in (out, reference))
    assert ours["global_step"] == theirs["global_step"] == 2  # the same iterations ...
    for key, value in theirs["state_dict"].items():  # ... on the same data split: the same weights
        torch.testing.assert_close(ours["state_dict"][key], value, rtol=1e-4, atol=1e-6,
                                   msg=lambda m, key=key: f"{key}: {m}")

    logged_map = [row["coco/bbox_mAP"] for row in history(records) if "coco/bbox_mAP" in row]
    assert len(logged_map) == 1 and logged_map[0] > 0
    module = MMDetModule(CONFIGS / "shapes_faster_rcnn.py", data_root=str(shapes_root),
                         load_from=str(out / "checkpoints" / "last.ckpt"))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    single = trainer.validate(module, datamodule=MMDetDataModule(module.cfg))[0]
    assert single["coco/bbox_mAP"] == pytest.approx(logged_map[0], abs=1e-3)


@pytest.mark.slow
def test_two_nodes_through_torchrun(shapes_root: Path, trained_checkpoint: Path, one_node_two_processes: Path,
                                    tmp_path: Path) -> None:
    port = _free_port()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "mmdet-lightning-test"]
    fit = ["-m", "mmdet_lightning.cli", *_fit_args(shapes_root, trained_checkpoint, devices=1, num_nodes=2)]
    _start_nodes([[*torchrun, "--node-rank", str(rank), *fit] for rank in (0, 1)], tmp_path)
    _check_like_one_node(tmp_path / OUT, one_node_two_processes, shapes_root)


@pytest.mark.slow
def test_two_nodes_as_srun_starts_them(shapes_root: Path, trained_checkpoint: Path, one_node_two_processes: Path,
                                       tmp_path: Path) -> None:
    port = str(_free_port())
    fit = [*_cli(), *_fit_args(shapes_root, trained_checkpoint, devices=1, num_nodes=2)]
    _start_nodes([[sys.executable, str(LAUNCHER), str(node), "2", port, "--", *fit] for node in (0, 1)], tmp_path)
    _check_like_one_node(tmp_path / OUT, one_node_two_processes, shapes_root)


def test_the_launcher_sets_what_lightnings_slurm_environment_reads(tmp_path: Path) -> None:
    probe = ("from lightning_fabric.plugins.environments import SLURMEnvironment as S; e = S(); "
             "print(S.detect(), e.world_size(), e.global_rank(), e.local_rank(), e.node_rank(), e.main_address, "
             "e.main_port)")
    for node in (0, 1):
        done = subprocess.run([sys.executable, str(LAUNCHER), str(node), "2", "29123", "--", sys.executable, "-c",
                               probe], env=user_environment(tmp_path / "home"), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split() == ["True", "2", str(node), "0", str(node), "localhost", "29123"]
