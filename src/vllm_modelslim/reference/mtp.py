"""Multi-token-prediction (MTP) layers stored next to the main model (GLM-4.5, DeepSeek-V3).

Such checkpoints store ``num_nextn_predict_layers`` extra decoder layers at
indices ``num_hidden_layers … num_hidden_layers + num_nextn_predict_layers − 1``
(``model.layers.<i>.{enorm,hnorm,eh_proj,shared_head.*,self_attn.*,mlp.*}``),
which speculative decoding runs and the main model's forward never reads.
The reference forward therefore sets them aside.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

import torch

_LAYER_INDEX = re.compile(r"^model\.layers\.(\d+)\.")


def mtp_layer_indices(config: Any) -> range:
    """Decoder-layer indices of the MTP layers of ``config`` (a transformers config); empty if none."""
    layers = getattr(config, "num_hidden_layers", None)
    nextn = int(getattr(config, "num_nextn_predict_layers", 0) or 0)
    return range(int(layers), int(layers) + nextn) if layers is not None else range(0)


def pop_mtp_tensors(tensors: MutableMapping[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """Remove the MTP layers' tensors from ``tensors`` (checkpoint name → tensor) and return them."""
    indices = mtp_layer_indices(config)
    names = [k for k in tensors if (m := _LAYER_INDEX.match(k)) and int(m[1]) in indices]
    return {name: tensors.pop(name) for name in names}
