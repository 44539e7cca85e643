"""One comparison per kernel family, shared by the kernel tests and the mutation test.

Every bound is a worst-case rounding bound derived from the arithmetic the
kernel is allowed to do, with ``u = eps/2`` the unit roundoff of a dtype
(round to nearest) and ``γ_n = n·u/(1 − n·u)`` the bound of an n-term float32
sum: the output rounded once to its dtype (``u·|exact|``), float32
accumulation and epilogue (``γ_n`` times the sum of the magnitudes), and, per
kernel, the intermediate roundings it is declared to make (e.g. torch's int8
op rounds ``x·q`` to bf16 before our float32 epilogue). Roundings of inputs
(scales, dequantized weights) enter as the exact rounding error of the data,
which is zero when the test picks values the dtype represents. No constant is
tuned to make a test pass; ``test_kernel_tests_catch_mutations.py`` shows the
same functions reject a 1 % scale error and a flipped zero point.

Integer outputs (activation and KV-cache quantization) are compared with
``quantization_mismatches``: equal to ``clamp(round_half_even(v))`` of the
exact float64 value ``v``, except a difference of one step where ``v`` lies
within the kernel's fp32 arithmetic error of a half-integer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

F64 = torch.float64


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u``: the largest relative error of one round-to-nearest into ``dtype``."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int, dtype: torch.dtype = torch.float32) -> float:
    """``γ_n = n·u/(1 − n·u)``: relative bound of an ``n``-term sum (or ``n`` chained operations)."""
    nu = n * unit_roundoff(dtype)
    return nu / (1 - nu)


def rounding_error(exact: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``|fl_dtype(v) − v|`` of float64 values ``v``: the exact error of storing them in ``dtype``."""
    return (exact.to(dtype).to(F64) - exact).abs()


def bound_violations(got: torch.Tensor, exact: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """Mask of the elements where ``|got − exact| > bound`` (non-finite ``got`` always violates)."""
    err = (got.to(F64) - exact).abs()
    return ~(err <= bound)


def assert_within(got: torch.Tensor, exact: torch.Tensor, bound: torch.Tensor) -> None:
    """Assert ``|got − exact| ≤ bound`` element-wise, reporting the worst ratio."""
    bad = bound_violations(got, exact, bound)
    if bool(bad.any()):
        ratio = ((got.to(F64) - exact).abs() / bound).max().item()
        raise AssertionError(
            f"{int(bad.sum())}/{bad.numel()} elements outside the bound, max err/bound {ratio:.3g}"
        )


# ---------------------------------------------------------------- weight-only GEMMs (int8, int4)


@dataclass(frozen=True)
class WeightOnlyRounding:
    """Roundings to the activation dtype a weight-only kernel makes besides its output.

    Attributes:
        raw_product: ``x·qᵀ`` (integer weight, no scale) rounded before a float32 epilogue.
        weight: the dequantized weight ``(q − z)·s`` rounded (dequantize-then-matmul).
        scale_and_zero: ``s`` and ``−z·s`` rounded (torch's int4 op takes them in the activation dtype).
        before_bias: ``x·Wᵀ`` rounded before the bias is added in the activation dtype.
    """

    raw_product: bool = False
    weight: bool = False
    scale_and_zero: bool = False
    before_bias: bool = False


WEIGHT_ONLY_ROUNDING = {
    ("int8", "reference"): WeightOnlyRounding(),
    ("int8", "dequant_matmul"): WeightOnlyRounding(weight=True),
    ("int8", "cpu_int8pack"): WeightOnlyRounding(raw_product=True),
    # few rows: float32 products and sums; many rows: cpu_int8pack's block GEMM (raw product in bf16)
    ("int8", "cpu_int8_avx512"): WeightOnlyRounding(raw_product=True),
    # few rows: exact limbs, float32 sums; many rows: the bf16 panel GEMM (exact products, float32
    # sums) on AVX512-BF16 CPUs (test_kernels_weight_only_int8_vnni holds both to the reference's
    # bound), else the inherited block GEMM (raw product in bf16 where that GEMM is bf16)
    ("int8", "cpu_int8_vnni_w8a16"): WeightOnlyRounding(raw_product=True),
    ("int4", "reference"): WeightOnlyRounding(),
    ("int4", "dequant_matmul"): WeightOnlyRounding(weight=True),
    ("int4", "cpu_int4pack"): WeightOnlyRounding(weight=True, scale_and_zero=True, before_bias=True),
    # many rows: W rounded to bf16; on AMX CPUs (dequantized blocks, oneDNN's GEMM) x·Wᵀ also rounded
    # before the bias; few rows: neither (test_kernels_int4_bf16 holds that path to the reference's bound)
    ("int4", "cpu_int4_avx512bf16"): WeightOnlyRounding(weight=True, before_bias=True),
    # its panel GEMM (CPUs without AMX): W rounded to bf16, float32 sums and bias, one rounding
    ("int4", "bf16_panel_gemm"): WeightOnlyRounding(weight=True),
}


def _per_input(t: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Per-channel ``[N]``/``[N, 1]`` or per-group ``[N, G]`` values expanded to ``[N, K]`` (float64)."""
    t = t.to(F64).reshape(n, -1)
    return t.repeat_interleave(k // t.shape[1], dim=1)


def weight_only_expectation(
    family: str,
    kernel_name: str,
    x: torch.Tensor,
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(exact, bound)`` of ``y = x·((q − z)·s)ᵀ + b`` for one weight-only kernel, ``[M, N]`` float64.

    ``x`` is in the activation dtype ``d``; ``scale``/``zero_point`` per channel
    or per group. Terms: ``u_d·|y|`` (output); ``γ_{K+4}``·(magnitude of every
    product, zero-point correction included) for float32 accumulation and
    epilogue; plus the kernel's declared roundings (:data:`WEIGHT_ONLY_ROUNDING`).
    """
    rounding = WEIGHT_ONLY_ROUNDING[(family, kernel_name)]
    dtype = x.dtype
    u = unit_roundoff(dtype)
    n, k = q.shape
    x64, q64 = x.to(F64), q.to(F64)
    s = _per_input(scale, n, k)
    z = _per_input(zero_point, n, k) if zero_point is not None else torch.zeros_like(s)
    w = (q64 - z) * s
    b = bias.to(F64) if bias is not None else torch.zeros(n, dtype=F64)
    y = x64 @ w.T + b
    ax = x64.abs()
    magnitude = ax @ (q64.abs() * s.abs() + (z * s).abs()).T + b.abs()
    bound = u * y.abs() + gamma(k + 4) * magnitude
    if rounding.raw_product:
        bound = bound + u * (x64 @ q64.T).abs() * s[:, 0]  # per-channel scale only (int8)
    if rounding.weight:
        bound = bound + ax @ rounding_error(w, dtype).T
    if rounding.scale_and_zero:
        bound = bound + ax @ (q64.abs() * rounding_error(s, dtype) + rounding_error(-z * s, dtype)).T
    if rounding.before_bias:
        bound = bound + u * (y - b).abs()
    return y, bound


# ---------------------------------------------------------------- scaled int8 GEMM


def scaled_int8_mm_expectation(
    x_q: torch.Tensor,
    x_scale: torch.Tensor | None,
    w_q: torch.Tensor,
    w_scale: torch.Tensor,
    int_bias: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(exact, bound)`` of ``((x_q·w_qᵀ + b_int)·s_x·s_w + b)``, ``[M, N]`` float64.

    The integer accumulation must be exact (int32); the epilogue runs in
    float32 (``G`` group partial sums, two scale products, the bias: ``γ_{G+4}``
    times the magnitude of the terms) and the result is rounded once to
    ``out_dtype`` (``u·|y|``). ``w_scale`` is ``[N]`` or per group ``[N, G]``.
    """
    n, k = w_q.shape
    groups = w_scale.shape[1] if w_scale.dim() == 2 else 1
    x_g = x_q.to(F64).unflatten(1, (groups, -1)).transpose(0, 1)  # [G, M, g]
    w_g = w_q.to(F64).unflatten(1, (groups, -1)).permute(1, 2, 0)  # [G, g, N]
    acc = torch.bmm(x_g, w_g)  # exact integers
    if int_bias is not None:
        acc[0] = acc[0] + int_bias.to(F64)
    s_w = w_scale.to(F64).reshape(n, groups).T.unsqueeze(1)  # [G, 1, N]
    s_x = x_scale.to(F64).reshape(-1, 1) if x_scale is not None else torch.ones(1, 1, dtype=F64)
    b = bias.to(F64) if bias is not None else torch.zeros(n, dtype=F64)
    y = (acc * s_w).sum(0) * s_x + b
    magnitude = (acc.abs() * s_w.abs()).sum(0) * s_x.abs() + b.abs()
    bound = unit_roundoff(out_dtype) * y.abs() + gamma(groups + 4) * magnitude
    return y, bound


# ---------------------------------------------------------------- routed experts


def routed_experts_expectation(
    x: torch.Tensor,
    topk_weights: torch.Tensor,
    topk_ids: torch.Tensor,
    experts: Sequence,
    expert_map: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(exact, bound)`` of ``y[t] = Σ_j w[t, j]·expert_{id[t, j]}(x[t])``, ``[T, H]`` float64.

    Each expert's output (in the activation dtype) is taken as given: it is a
    row-wise function, the same bits in a batch as alone. The combine may run
    in float32 (``k`` products and sums: ``γ_{k+2}·Σ|w·e|``) and the result is
    rounded once to ``x.dtype`` (``u·|y|``). Experts of other ranks
    (``expert_map`` −1) contribute nothing.
    """
    ids = topk_ids.to(torch.long)
    if expert_map is not None:
        ids = expert_map.to(torch.long)[ids]
    y = torch.zeros(x.shape, dtype=F64)
    magnitude = torch.zeros(x.shape, dtype=F64)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            if int(ids[t, j]) < 0:
                continue
            term = topk_weights[t, j].to(F64) * experts[int(ids[t, j])](x[t : t + 1])[0].to(F64)
            y[t] += term
            magnitude[t] += term.abs()
    bound = unit_roundoff(x.dtype) * y.abs() + gamma(ids.shape[1] + 2) * magnitude
    return y, bound


# ---------------------------------------------------------------- Kronecker transform


def kronecker_bound(x: torch.Tensor, left: torch.Tensor | None, right: torch.Tensor | None) -> torch.Tensor:
    """Bound of the float32 two-matmul transform against the float64 ``x·(L ⊗ R)``, ``[M, K]``.

    Two float32 products with inner sizes ``r`` and ``l`` (one is absent for an
    identity factor): ``γ_{l+r}·(|x|·(|L| ⊗ |R|))``.
    """
    k = x.shape[-1]
    l_size = left.shape[0] if left is not None else k // right.shape[0]
    r_size = k // l_size
    abs_l = left.to(F64).abs() if left is not None else torch.eye(l_size, dtype=F64)
    abs_r = right.to(F64).abs() if right is not None else torch.eye(r_size, dtype=F64)
    return gamma(l_size + r_size) * (x.to(F64).abs() @ torch.kron(abs_l, abs_r))


# ---------------------------------------------------------------- integer quantization


def quantization_mismatches(
    q: torch.Tensor, exact_value: torch.Tensor, tie_slack: torch.Tensor | float, low: int, high: int
) -> torch.Tensor:
    """Mask of the elements of integer ``q`` that are not ``clamp(round(exact_value))``.

    ``exact_value`` is the float64 value before rounding (e.g. ``x/s``). The
    fp32 arithmetic of the kernel moves it by at most ``tie_slack``; where that
    can carry it across a half-integer, either neighbour is accepted (a
    difference of one step). Ties of the exact value round half to even.
    """
    want = torch.round(exact_value).clamp(low, high)
    diff = (q.to(F64) - want).abs()
    distance_to_tie = (exact_value - torch.floor(exact_value) - 0.5).abs()
    near_tie = distance_to_tie <= tie_slack
    return ~((diff == 0) | ((diff == 1) & near_tie))


def assert_quantized(
    q: torch.Tensor,
    exact_value: torch.Tensor,
    tie_slack: torch.Tensor | float,
    low: int = -128,
    high: int = 127,
) -> None:
    """Assert :func:`quantization_mismatches` is empty."""
    bad = quantization_mismatches(q, exact_value, tie_slack, low, high)
    assert not bool(bad.any()), f"{int(bad.sum())}/{bad.numel()} quantized values differ"


def static_quant_value(x: torch.Tensor, scale: float, offset: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``x·(1/s) + o`` (``1/s`` the float32 reciprocal the NPU op is given) and its fp32 slack.

    The kernel rounds the product and the sum to float32: ``u·(|x/s| + |v|)``.
    """
    s32 = torch.tensor(float(scale), dtype=torch.float32).to(F64)
    reciprocal = (1.0 / s32).to(torch.float32).to(F64)
    product = x.to(F64) * reciprocal
    value = product + float(offset)
    return value, unit_roundoff(torch.float32) * (product.abs() + value.abs())


def dynamic_quant_value(x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``x / s`` per row (``s`` the float32 scale ``[M]``) and the slack of one fp32 division."""
    value = x.to(F64) / scale.to(F64).unsqueeze(-1)
    return value, unit_roundoff(torch.float32) * value.abs()


def dynamic_scale_expectation(
    x: torch.Tensor, bits: int, clip_ratio: float, ops: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(exact, bound)`` of the per-row scale ``clip·max|x|/qmax`` (1 for a zero row), float64 ``[M]``.

    ``ops`` float32 operations each round once: ``γ_ops·s``.
    """
    qmax = 2.0 ** (bits - 1) - 1
    row_max = x.to(F64).abs().amax(dim=-1)
    exact = torch.where(row_max > 0, row_max * clip_ratio / qmax, torch.ones_like(row_max))
    return exact, gamma(ops) * exact


def kv_quant_value(
    x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``x/s + o`` per channel (C8 KV cache) and the slack of an fp32 division and sum."""
    quotient = x.to(F64) / scale.to(F64)
    value = quotient + offset.to(F64)
    return value, unit_roundoff(torch.float32) * (quotient.abs() + value.abs())


def kv_dequant_expectation(
    q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(exact, bound)`` of ``(q − o)·s`` in ``dtype``: one fp32 product, one rounding to ``dtype``."""
    exact = (q.to(F64) - offset.to(F64)) * scale.to(F64)
    return exact, (unit_roundoff(dtype) + gamma(1)) * exact.abs()
