"""The one error type of the export: what cannot be exported, naming the model family and the op."""

from __future__ import annotations

__all__ = ["ExportError"]


class ExportError(RuntimeError):
    """A detector, config or checkpoint that cannot be exported; raised before anything is written.

    Attributes:
        family: the model family (``"RetinaNet (one-stage dense head RetinaHead)"``), when known.
        op: the op, module or setting without an export form, when one is to blame.

    Example::
        >>> str(ExportError("no ONNX form", family="FasterRCNN", op="DeformConv2dPack"))
        'Cannot export FasterRCNN: no ONNX form [op: DeformConv2dPack]'
    """

    def __init__(self, message: str, family: str | None = None, op: str | None = None) -> None:
        self.reason = message
        self.family = family
        self.op = op
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"Cannot export {self.family}: " if self.family else "Cannot export: "
        return where + self.reason + (f" [op: {self.op}]" if self.op else "")

    def with_family(self, family: str) -> ExportError:
        """The same error, naming ``family`` if it did not yet."""
        if self.family is None:
            self.family = family
            self.args = (self._text(),)
        return self

    def __str__(self) -> str:
        return self._text()
