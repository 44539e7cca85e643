"""Linear schemes; importing this package registers them."""

from vllm_modelslim.schemes.linear.w4a4_dynamic import W4A4DynamicLinearScheme
from vllm_modelslim.schemes.linear.w4a4_flatquant import W4A4FlatQuantLinearScheme
from vllm_modelslim.schemes.linear.w4a8_dynamic import W4A8DynamicLinearScheme
from vllm_modelslim.schemes.linear.w4a16 import W4A16LinearScheme
from vllm_modelslim.schemes.linear.w8a8 import W8A8StaticLinearScheme
from vllm_modelslim.schemes.linear.w8a8_dynamic import W8A8DynamicLinearScheme
from vllm_modelslim.schemes.linear.w8a8_mix import W8A8MixLinearScheme
from vllm_modelslim.schemes.linear.w8a16 import W8A16LinearScheme

__all__ = [
    "W4A4DynamicLinearScheme",
    "W4A4FlatQuantLinearScheme",
    "W4A8DynamicLinearScheme",
    "W4A16LinearScheme",
    "W8A8DynamicLinearScheme",
    "W8A8MixLinearScheme",
    "W8A8StaticLinearScheme",
    "W8A16LinearScheme",
]
