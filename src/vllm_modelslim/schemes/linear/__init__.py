"""Linear schemes; importing this package registers them."""

from vllm_modelslim.schemes.linear.w8a8 import W8A8StaticLinearScheme
from vllm_modelslim.schemes.linear.w8a8_dynamic import W8A8DynamicLinearScheme
from vllm_modelslim.schemes.linear.w8a16 import W8A16LinearScheme

__all__ = ["W8A8DynamicLinearScheme", "W8A8StaticLinearScheme", "W8A16LinearScheme"]
