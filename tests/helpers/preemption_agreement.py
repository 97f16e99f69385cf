"""The agreement of PreemptionHandler alone, on 2 gloo processes under torchrun; run by test_preemption.py.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/helpers/preemption_agreement.py OUT \\
        SECONDS_BETWEEN_AGREEMENTS SIGNAL_RANK SIGNAL_BATCH

Each rank ends 200 "batches" (rank 0 sleeps 4 ms a batch, rank 1 8 ms, so their proposals differ) and calls the
handler's agreement after each; rank SIGNAL_RANK records a stop request before batch SIGNAL_BATCH ends. Each rank
writes OUT/agreement<R>.json: the batch at which it decided to stop, and the batches between agreements after
each read.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main() -> None:
    import torch.distributed as dist

    from mmdet_lightning.engine.preemption import PreemptionHandler

    out, seconds, signal_rank, signal_batch = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    handler = PreemptionHandler(seconds_between_agreements=seconds)
    handler._group = dist.new_group(backend="gloo")
    decided, intervals = None, []
    for batch in range(1, 201):
        time.sleep(0.004 * (rank + 1))  # the batch's work
        if rank == signal_rank and batch == signal_batch:
            handler.requested = 1
        handler.batches = batch
        decision = handler._agree()
        intervals.append(handler.batches_between_agreements)
        if decision and decided is None:
            decided = batch
    handler.teardown(None, None, "fit")  # type: ignore[arg-type]
    (out / f"agreement{rank}.json").write_text(json.dumps({"decided": decided, "intervals": intervals}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
