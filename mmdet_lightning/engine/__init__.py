"""What ``MMDetModule`` does at each Lightning hook, one concern a module, as mmengine's runner does it.

    model.py              build_detector (the config's model in mmdet's scope), the preprocessor's device
    strategy.py           single-device / DDP set-up, SyncBN, unused parameters, rank 0's buffers
    optimization.py       optim_wrapper, auto_scale_lr, param_scheduler and when they step
    invalid_loss.py       CheckInvalidLossHook without a synchronisation before backward
    evaluation_loop.py    the config's evaluators per stage, their results and COCO evaluations
    run_state.py          what a checkpoint keeps besides weights, optimizer and schedulers

The task-specific parts (losses, predictions, class checks) are the task's: :mod:`mmdet_lightning.tasks`.
"""
