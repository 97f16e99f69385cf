"""The one door to the private attributes of mmdet_lightning's dependencies.

mmdet_lightning reads and writes a few private attributes of Lightning, wandb, mmengine, mmdet, torch and
NumPy (the Lightning ``WandbLogger``'s pending ``wandb.init`` arguments, a DDP strategy's ``_ddp_kwargs``, an
``OptimWrapper``'s ``_inner_count``, ...). Each one is read here, in a small named function of the module named
after the package that owns it (:mod:`.lightning`, :mod:`.wandb`, :mod:`.mmengine`, :mod:`.mmdet`,
:mod:`.torch`, :mod:`.numpy`), never through ``obj._x`` or ``getattr(obj, "_x", default)`` elsewhere. When a
dependency renames or retypes one, the function raises :class:`CompatError` naming the package, its installed
version and the attribute, instead of mmdet_lightning silently doing less; ``tests/test_compat.py`` builds the
real objects and fails as soon as an upgrade removes one.

Adding an entry: one function in the owner's module, built on :func:`private_attr` / :func:`set_private_attr`
(or raising :class:`CompatError` itself), and one test in ``tests/test_compat.py``. A default is only returned
where the attribute is legitimately absent, and the function's docstring says why.

Example::
    >>> from mmdet_lightning._compat import CompatError, private_attr
    >>> class Thing:
    ...     _size = 3
    >>> private_attr(Thing(), "_size", package="torch", expected=int)
    3
    >>> private_attr(Thing(), "_gone", package="torch")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mmdet_lightning._compat._core.CompatError: mmdet_lightning reads the private attribute `Thing._gone` of torch ...
"""

from ._core import CompatError, installed_version, private_attr, private_method, set_private_attr

__all__ = ["CompatError", "installed_version", "private_attr", "private_method", "set_private_attr"]
