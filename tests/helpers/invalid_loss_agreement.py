"""InvalidLossCheck on 2 gloo processes under torchrun, with DDP-like gradient all-reduces on the default group
during each step's "backward"; run by test_invalid_loss.py.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/helpers/invalid_loss_agreement.py OUT

Rank 1's loss is NaN at step 7, rank 0's infinite at step 12. Each rank writes OUT/invalid<R>.json: the steps it
skipped, and the sum of the "gradients" of every step (all ranks took part in every all-reduce).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    import torch
    import torch.distributed as dist

    from mmdet_lightning.engine.invalid_loss import InvalidLossCheck

    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    check = InvalidLossCheck("skip")
    skipped, gradients = [], 0.0
    for step in range(20):
        loss = torch.tensor(1.0)
        if (rank, step) in ((1, 7), (0, 12)):
            loss = torch.tensor(float("nan") if rank == 1 else float("inf"))
        started = check.start(loss, distributed=True)
        for bucket in range(3):  # DDP's gradient buckets, on the default group, while the flag's all-reduce runs
            grad = torch.full((1000,), float(bucket + 1))
            dist.all_reduce(grad)
            gradients += float(grad[0])
        if not check.passed(started, {"loss": float(loss)}, f"step {step}"):
            skipped.append(step)
    (out / f"invalid{rank}.json").write_text(json.dumps({"skipped": skipped, "gradients": gradients}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
