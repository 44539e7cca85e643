"""Reference routed experts built straight from per-expert checkpoint tensors.

Hugging Face's Qwen3-MoE (transformers 5) keeps its experts as fused 3-D
parameters and calls them as ``experts(hidden [T, H], top_k_index [T, k],
top_k_weights [T, k])``. :class:`ReferenceExperts` takes that place: each
expert is three projections (``gate_proj``, ``up_proj``, ``down_proj``), each
built by the caller from its stored tensors (float, or a reference quantized
linear of the checkpoint's format), and the layer output is
``Σ_j w_j · down(silu(gate(x)) · up(x))`` over the selected experts (spec
§4.2 math), summed in float64. Every projection is row-wise (per-token
activation quantization included), so each expert runs once on the rows
routed to it. It shares no code with the vLLM path.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping

import torch

EXPERT_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")

Projection = Callable[[torch.Tensor], torch.Tensor]
ProjectionBuilder = Callable[[str, dict[str, torch.Tensor]], tuple[Projection, str | None]]
"""``(checkpoint name, its tensors by suffix) -> (forward, quant label or None when float)``."""


def float_linear(weight: torch.Tensor, dtype: torch.dtype) -> Projection:
    """``x · Wᵀ`` in ``dtype`` (an unquantized expert projection)."""
    weight = weight.to(dtype)
    return lambda x: x @ weight.t()


class ReferenceExperts(torch.nn.Module):
    """All routed experts of one MoE layer, from per-expert checkpoint tensors.

    Args:
        prefix: checkpoint prefix of the layer (``model.layers.0.mlp.experts``).
        num_experts: experts in the layer.
        tensors: checkpoint tensors by name; this layer's are removed from it.
        build_projection: makes each projection from its name and tensors.
        dtype: compute dtype of the activations between projections.

    Raises:
        KeyError: an expert's tensors are missing.
    """

    def __init__(
        self,
        prefix: str,
        num_experts: int,
        tensors: MutableMapping[str, torch.Tensor],
        build_projection: ProjectionBuilder,
        dtype: torch.dtype,
    ):
        super().__init__()
        self.dtype = dtype
        self.quant_types: set[str] = set()
        self.experts: list[dict[str, Projection]] = []
        for expert in range(num_experts):
            projections = {}
            for proj in EXPERT_PROJECTIONS:
                name = f"{prefix}.{expert}.{proj}"
                own = {k[len(name) + 1 :]: tensors.pop(k) for k in list(tensors) if k.startswith(name + ".")}
                projections[proj], label = build_projection(name, own)
                if label is not None:
                    self.quant_types.add(label)
            self.experts.append(projections)

    def expert_forward(self, expert: int, x: torch.Tensor) -> torch.Tensor:
        """One expert's SwiGLU MLP on ``x`` ``[rows, H]`` (activations kept in the model dtype)."""
        p = self.experts[expert]
        gate, up = p["gate_proj"](x).to(torch.float32), p["up_proj"](x).to(torch.float32)
        return p["down_proj"]((torch.nn.functional.silu(gate) * up).to(self.dtype))

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        x = hidden_states.to(self.dtype)
        out = torch.zeros(x.shape, dtype=torch.float64)
        for expert in range(len(self.experts)):
            tokens, slots = torch.where(top_k_index == expert)
            if len(tokens) == 0:
                continue
            y = self.expert_forward(expert, x[tokens]).to(torch.float64)
            out.index_add_(0, tokens, y * top_k_weights[tokens, slots].to(torch.float64)[:, None])
        return out.to(hidden_states.dtype)
