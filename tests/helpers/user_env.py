"""Fresh processes in the environment a new user has: no W&B account, no ``WANDB_MODE``, no terminal.

Every user flow (README examples, the CLI with the shipped YAMLs, DDP, multi-node) runs through
:func:`run_as_user`: its environment has no ``WANDB_*`` variable and a ``HOME`` of its own (so no netrc
entry and no W&B settings file), standard input is closed, and the working directory is the test's folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from mmdet_lightning.lightning_package import ENV, NAME

REPO = Path(__file__).resolve().parents[2]
#: variables that would tell W&B something a new user's shell does not
_USER_CHOICES = ("NETRC", "PYTHONWARNINGS")


def user_environment(home: Path, **extra: str) -> dict[str, str]:
    """``os.environ`` less every W&B variable and netrc, with ``HOME`` = ``home`` (created), plus ``extra``;
    in the suite's ``lightning.pytorch`` pass, ``MMDET_LIGHTNING_PACKAGE=lightning`` unless ``extra`` says otherwise.

    The repository is on ``PYTHONPATH`` so that the process imports this checkout's package, and the
    interpreter's ``bin`` folder on ``PATH`` (an activated virtual environment).
    """
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k not in _USER_CHOICES}
    env["HOME"] = str(home)
    # the environment's scripts (mmdet-lightning) on PATH, as in a shell with the virtual environment activated
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    if NAME == "lightning.pytorch":
        env.setdefault(ENV, "lightning")  # the suite's lightning.pytorch pass (tests/helpers/lightning_first.py)
    env.update(extra)
    return env


def run_as_user(args: Sequence[str], cwd: Path, timeout: float = 600, **extra: str) -> subprocess.CompletedProcess:
    """Run ``args`` (``python`` means this interpreter) in ``cwd`` as a new user would, stdin closed.

    Returns the finished process (stdout and stderr as text); does not raise on a non-zero exit.
    """
    args = [sys.executable if a == "python" else a for a in args]
    script = Path(sys.executable).parent / "mmdet-lightning"  # the console script that pip installed
    if args[0] == "mmdet-lightning":
        command = [str(script)] if script.is_file() else [sys.executable, "-m", "mmdet_lightning.cli"]
        args = [*command, *args[1:]]
    return subprocess.run(args, cwd=cwd, env=user_environment(cwd / "home", **extra), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def explain(process: subprocess.CompletedProcess) -> str:
    """The end of a process's output, for assertion messages."""
    return f"exit {process.returncode}\n--- stdout\n{process.stdout[-4000:]}\n--- stderr\n{process.stderr[-6000:]}"
