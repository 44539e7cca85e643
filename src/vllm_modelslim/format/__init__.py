"""Format layer: the description file, checkpoint tensor names, packed modules.

Everything that knows how msmodelslim lays out a checkpoint on disk lives here;
schemes ask this layer which quant type a vLLM layer has and where its tensors
are, kernels never see it.
"""

from vllm_modelslim.format.checkpoint import CheckpointIndex, TensorInfo
from vllm_modelslim.format.description import (
    DESCRIPTION_FILE_NAME,
    FLOAT,
    QuantDescription,
    find_description_file,
    load_description,
    parse_description_file,
)
from vllm_modelslim.format.errors import (
    AmbiguousDescriptionError,
    CheckpointTensorError,
    DescriptionFormatError,
    DescriptionNotFoundError,
    InvalidScaleError,
    LayerNotDescribedError,
    ModelSlimFormatError,
    PackedShardMismatchError,
    UnknownQuantTypeError,
    UnusedDescriptionEntryError,
)
from vllm_modelslim.format.layer_lookup import LayerQuant, resolve_layer, shard_prefixes
from vllm_modelslim.format.packed_modules import PACKED_MODULES_BY_MODEL_TYPE, packed_modules_for

__all__ = [
    "DESCRIPTION_FILE_NAME",
    "FLOAT",
    "PACKED_MODULES_BY_MODEL_TYPE",
    "AmbiguousDescriptionError",
    "CheckpointIndex",
    "CheckpointTensorError",
    "DescriptionFormatError",
    "DescriptionNotFoundError",
    "InvalidScaleError",
    "LayerNotDescribedError",
    "LayerQuant",
    "ModelSlimFormatError",
    "PackedShardMismatchError",
    "QuantDescription",
    "TensorInfo",
    "UnknownQuantTypeError",
    "UnusedDescriptionEntryError",
    "find_description_file",
    "load_description",
    "packed_modules_for",
    "parse_description_file",
    "resolve_layer",
    "shard_prefixes",
]
