"""Run a command as the tasks of a one-node SLURM job would run: run by test_preemption.py.

    python tests/helpers/slurm_job.py NTASKS PORT -- COMMAND...

Starts NTASKS copies of COMMAND with the variables that ``srun`` gives each task and that Lightning's
``SLURMEnvironment`` reads (``SLURM_NTASKS``, ``SLURM_NTASKS_PER_NODE``, ``SLURM_PROCID``, ``SLURM_LOCALID``,
``SLURM_JOB_ID`` = 4242, ...), all in this launcher's own process group, so that a signal to the group reaches every
task as SLURM's ``--signal`` does. The launcher itself only waits (a signal to the group does not stop it) and exits
with the first task's non-zero exit code, or 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def main() -> None:
    ntasks, port = int(sys.argv[1]), sys.argv[2]
    command = sys.argv[sys.argv.index("--") + 1:]
    os.setsid()  # a process group of its own: the launcher and its tasks
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, lambda *_: None)  # a handler, not SIG_IGN: the tasks get the default back at exec
    tasks = []
    for rank in range(ntasks):
        env = dict(os.environ, SLURM_JOB_ID="4242", SLURM_JOB_NAME="mmdet-lightning-test", SLURM_NTASKS=str(ntasks),
                   SLURM_NTASKS_PER_NODE=str(ntasks), SLURM_JOB_NUM_NODES="1", SLURM_NNODES="1",
                   SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NODEID="0", SLURM_NODELIST="localhost",
                   SLURM_JOB_NODELIST="localhost", MASTER_PORT=port)
        tasks.append(subprocess.Popen(command, env=env))
    codes = [task.wait() for task in tasks]
    sys.exit(next((code for code in codes if code), 0))


if __name__ == "__main__":
    main()
