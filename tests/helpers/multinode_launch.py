"""Start one "node" of a 2-node run as SLURM's ``srun`` would: run by test_multinode.py.

    python tests/helpers/multinode_launch.py NODE_ID NUM_NODES PORT -- COMMAND...

srun starts one task per node with the variables that Lightning's ``SLURMEnvironment`` reads (``SLURM_NTASKS``,
``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NODEID``, ``SLURM_JOB_ID``, ``SLURM_NODELIST``, ...); this launcher
sets them for one task on this machine (the node list is ``localhost``) and runs COMMAND in its place.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    node, nodes, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    command = sys.argv[sys.argv.index("--") + 1:]
    os.environ.update({
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "mmdet-lightning-test", "SLURM_NTASKS": str(nodes),
        "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_NNODES": str(nodes),
        "SLURM_PROCID": str(node), "SLURM_LOCALID": "0", "SLURM_NODEID": str(node),
        "SLURM_NODELIST": "localhost", "SLURM_JOB_NODELIST": "localhost", "MASTER_PORT": port,
    })
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
