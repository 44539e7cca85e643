"""Errors raised when a ModelSlim checkpoint cannot be served as described.

Every error names the file it comes from and, where one is involved, the layer,
so that a user can find the problem without reading our code. All of them are
``ValueError`` subclasses (a bad input, not a bug), raised while vLLM builds or
loads the model, before any forward pass.
"""

from __future__ import annotations

from pathlib import Path


class ModelSlimFormatError(ValueError):
    """A ModelSlim checkpoint (description file or weights) is unusable.

    Attributes:
        file: the file (or folder) the problem was found in, if known.
        layer: the vLLM layer prefix (or tensor name) involved, if any.
        detail: the message without the file/layer context.
    """

    def __init__(self, detail: str, *, file: str | Path | None = None, layer: str | None = None):
        self.file = str(file) if file is not None else None
        self.layer = layer
        self.detail = detail
        parts = []
        if self.file is not None:
            parts.append(self.file)
        if layer is not None:
            parts.append(f"layer {layer!r}")
        parts.append(detail)
        super().__init__(": ".join(parts))


class DescriptionNotFoundError(ModelSlimFormatError):
    """No ``quant_model_description*.json`` in the model folder."""


class AmbiguousDescriptionError(ModelSlimFormatError):
    """Several description files are candidates; the user must keep one."""


class DescriptionFormatError(ModelSlimFormatError):
    """The description file is not valid JSON, not an object, or has bad values."""


class UnusedDescriptionEntryError(DescriptionFormatError):
    """The description lists tensors of layers (or experts) the model does not have."""


class LayerNotDescribedError(ModelSlimFormatError):
    """A quantizable layer has no ``<prefix>.weight`` entry in the description."""


class UnknownQuantTypeError(ModelSlimFormatError):
    """The description names a quant type we have no scheme for (for this layer type)."""


class PackedShardMismatchError(ModelSlimFormatError):
    """The shards of a packed layer (q/k/v, gate/up, experts) disagree on quant type."""


class CheckpointTensorError(ModelSlimFormatError):
    """A checkpoint tensor is missing, duplicated, or has the wrong dtype or shape."""


class InvalidScaleError(ModelSlimFormatError):
    """A loaded scale is zero, negative, NaN or inf, or an offset is out of range."""
