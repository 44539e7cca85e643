"""vLLM's ``CompressedTensorsConfig`` with CPU MoE experts run by this project's MoE schemes.

vLLM 0.32 has no CPU backend for compressed-tensors int8 or int4 experts
(engine start fails with "No Int8 MoE backend" / "No WNA16 MoE backend").
This subclass, registered under vLLM's own name ``compressed-tensors`` (so
detection from config.json stays vLLM's), answers only for MoE layers on CPU
whose scheme maps to a ModelSlim quant type (:func:`moe_quant_type`): it
describes every expert projection with that type and hands the layer to the
same ``ModelSlimFusedMoEMethod`` as a ModelSlim checkpoint, whose parameters,
loaders, header checks and grouped-expert forward then apply unchanged.
Every other layer, and every layer on other platforms, is vLLM's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from vllm.model_executor.layers.fused_moe import RoutedExperts
from vllm.model_executor.layers.quantization.base_config import QuantizeMethodBase
from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors import (
    CompressedTensorsConfig,
)
from vllm.platforms import current_platform

from vllm_modelslim.format.checkpoint import CheckpointIndex
from vllm_modelslim.format.description import QuantDescription
from vllm_modelslim.plugin.compressed_tensors.kernel_choice import kernel_mode
from vllm_modelslim.plugin.compressed_tensors.moe_quant_type import moe_quant_type
from vllm_modelslim.plugin.moe_method import ModelSlimFusedMoEMethod
from vllm_modelslim.schemes.moe.base import MoEContext
from vllm_modelslim.schemes.registry import require_scheme_class

VLLM_NAME = "compressed-tensors"


class CompressedTensorsCpuConfig(CompressedTensorsConfig):
    """vLLM's compressed-tensors config, plus CPU experts through the ModelSlim MoE schemes."""

    modelslim_checkpoint: CheckpointIndex | None = None
    modelslim_source: str = "config.json (quantization_config)"

    def maybe_update_config(
        self, model_name: str, hf_config: Any = None, revision: str | None = None
    ) -> None:
        """Read the safetensors headers of a local model folder (expert tensors are checked against them)."""
        super().maybe_update_config(model_name, hf_config, revision)
        folder = Path(model_name)
        if folder.is_dir():
            self.modelslim_checkpoint = CheckpointIndex.scan(folder)
            self.modelslim_source = f"{folder / 'config.json'} (quantization_config)"

    def get_quant_method(self, layer: torch.nn.Module, prefix: str) -> QuantizeMethodBase | None:
        if isinstance(layer, RoutedExperts) and current_platform.is_cpu():
            method = self._cpu_moe_method(layer, prefix)
            if method is not None:
                return method
        return super().get_quant_method(layer, prefix)

    def _cpu_moe_method(self, layer: RoutedExperts, prefix: str) -> QuantizeMethodBase | None:
        if kernel_mode() == "never":
            return None
        self._add_fused_moe_to_target_scheme_map()  # as vLLM's MoE path: "Linear" targets cover experts
        projections = (layer.ckpt_gate_proj_name, layer.ckpt_up_proj_name or "", layer.ckpt_down_proj_name)
        quant_types = {
            moe_quant_type(self.get_scheme_dict(layer, f"{prefix}.0.{name}")) for name in projections
        }
        if len(quant_types) != 1 or None in quant_types:
            return None  # vLLM's own method decides (and raises for mixed schemes)
        (quant_type,) = quant_types
        num_experts = layer.moe_config.num_logical_experts
        entries = {
            f"{prefix}.{expert}.{name}.weight": quant_type
            for expert in range(num_experts)
            for name in projections
        }
        context = MoEContext(
            prefix=prefix,
            quant_type=quant_type,
            checkpoint_prefix=prefix,
            projections=projections,
            num_experts=num_experts,
            description=QuantDescription.from_mapping(entries, source=self.modelslim_source),
            checkpoint=self.modelslim_checkpoint,
        )
        scheme_cls = require_scheme_class(quant_type, "moe", layer=prefix, file=self.modelslim_source)
        return ModelSlimFusedMoEMethod(scheme_cls(context), layer.moe_config)
