"""``vllm_onednn_static`` and ``cpu_int8_vnni`` on the real tensors of tool-made W8A8 static checkpoints.

Every W8A8 layer's ``weight``, ``quant_bias``, ``deq_scale`` and input
scale/offset, fed activations quantized with that layer's own scale and
offset: the kernel's split of ``quant_bias`` finds ``input_offset`` where
msmodelslim folded no float bias, keeps the folded remainder exact in float32
where it did (m4: ``round(bias/deq_scale)`` up to ~1.6e5), and gives the same
bits as ``torch._int_mm``; so does the project's VNNI kernel (``quant_bias`` in its int32 constant).
"""

import pytest
import torch
from ckpt_utils import tensors

from vllm_modelslim.kernels import quantize_static_per_tensor
from vllm_modelslim.kernels.scaled_int8_mm import (
    CpuInt8VnniScaledInt8MM,
    TorchIntMMScaledInt8MM,
    VllmOnednnStaticScaledInt8MM,
    int_bias_zero_point,
    make_scaled_int8_mm,
)
from vllm_modelslim.kernels.scaled_int8_mm.base import FLOAT32_EXACT_INT
from vllm_modelslim.kernels.scaled_int8_mm.cpu_int8_vnni import ops_unavailable


@pytest.mark.parametrize("recipe", ["w8a8_static", "w8a8_static_m4"])
def test_split_and_results_on_every_static_layer(quantized, recipe):
    ckpt = tensors(quantized(recipe))
    layers = sorted(name.removesuffix(".quant_bias") for name in ckpt if name.endswith(".quant_bias"))
    assert len(layers) == 28
    onednn = VllmOnednnStaticScaledInt8MM.is_supported("cpu")[0]
    own = CpuInt8VnniScaledInt8MM.is_supported("cpu")[0] and ops_unavailable() is None
    g = torch.Generator().manual_seed(0)
    folded_layers = 0
    for name in layers:
        weight, quant_bias = ckpt[f"{name}.weight"], ckpt[f"{name}.quant_bias"]
        offset = int(ckpt[f"{name}.input_offset"].float().item())
        sums = weight.to(torch.int64).sum(dim=1)
        folded = quant_bias.to(torch.int64) + offset * sums  # round(bias/deq_scale): m4's folded float bias
        z = int_bias_zero_point(weight, quant_bias)
        assert z is not None and int((quant_bias.to(torch.int64) + z * sums).abs().max()) <= FLOAT32_EXACT_INT
        if not bool(folded.any()):
            assert z == offset, name
        folded_layers += bool(folded.any())
        if not onednn:
            continue
        deq_scale = ckpt[f"{name}.deq_scale"].float()
        input_scale = ckpt[f"{name}.input_scale"].float()
        x = torch.randn(5, weight.shape[1], generator=g) * 30 * input_scale  # x_q − offset spans about ±100
        x_q = quantize_static_per_tensor(x, input_scale, offset)
        kernel = make_scaled_int8_mm(weight, deq_scale, quant_bias, kernel=VllmOnednnStaticScaledInt8MM)
        int_mm = make_scaled_int8_mm(weight, deq_scale, quant_bias, kernel=TorchIntMMScaledInt8MM)
        vnni = (
            make_scaled_int8_mm(weight, deq_scale, quant_bias, kernel=CpuInt8VnniScaledInt8MM)
            if own
            else None
        )
        for out_dtype in (torch.bfloat16, torch.float32):
            want = int_mm(x_q, None, None, out_dtype)
            assert torch.equal(kernel(x_q, None, None, out_dtype), want), name
            assert vnni is None or torch.equal(vnni(x_q, None, None, out_dtype), want), name
    # m4 folds the q/k/v/gate/up biases (4 layers × 5); the new pipeline folds none
    assert folded_layers == (20 if recipe == "w8a8_static_m4" else 0)
