"""pytest plugin for the suite's second pass: ``pytest -p tests.helpers.lightning_first -m both_packages``.

Loaded before any test module, it does what a user's ``import lightning as L`` at the top of a script does, so
mmdet_lightning builds on ``lightning.pytorch`` in this process; processes that the tests start (CLI, DDP,
scripts) get ``MMDET_LIGHTNING_PACKAGE=lightning`` from :func:`tests.helpers.user_env.user_environment`, as a lightning
user's shell running ``mmdet-lightning`` has.
"""

import lightning.pytorch  # noqa: F401
