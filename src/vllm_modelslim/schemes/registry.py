"""Registry of quantization schemes keyed by ``(quant_type, layer_type)`` (spec §2).

``@register_scheme("W8A8_DYNAMIC", "linear")`` registers a class once; a second
registration of the same key is an error. :func:`get_scheme_class` returns None
for an unknown key and lets the caller raise an error that names the layer and
the description file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

LAYER_TYPES = ("linear", "moe", "attention")

_SCHEME_REGISTRY: dict[tuple[str, str], type] = {}

T = TypeVar("T", bound=type)


def register_scheme(quant_type: str, layer_type: str) -> Callable[[T], T]:
    """Class decorator registering a scheme for ``(quant_type, layer_type)``.

    Raises:
        ValueError: ``layer_type`` is not one of :data:`LAYER_TYPES`, or the key
            is already registered.
    """
    if layer_type not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {layer_type!r}; expected one of {LAYER_TYPES}")

    def decorator(cls: T) -> T:
        key = (quant_type, layer_type)
        if key in _SCHEME_REGISTRY:
            raise ValueError(
                f"Scheme already registered for {quant_type}/{layer_type}: {_SCHEME_REGISTRY[key].__name__}"
            )
        _SCHEME_REGISTRY[key] = cls
        return cls

    return decorator


def get_scheme_class(quant_type: str, layer_type: str) -> type | None:
    """The scheme class for ``(quant_type, layer_type)``, or None."""
    return _SCHEME_REGISTRY.get((quant_type, layer_type))


def registered_quant_types(layer_type: str) -> list[str]:
    """Sorted quant types that have a scheme for ``layer_type``."""
    return sorted(qt for qt, lt in _SCHEME_REGISTRY if lt == layer_type)


def require_scheme_class(quant_type: str, layer_type: str, *, layer: str, file: str) -> type:
    """The scheme class for ``(quant_type, layer_type)``.

    Raises:
        UnknownQuantTypeError: no scheme is registered; the message names the
            layer, the description file and the supported types.
    """
    from vllm_modelslim.format.errors import UnknownQuantTypeError

    scheme_cls = get_scheme_class(quant_type, layer_type)
    if scheme_cls is None:
        raise UnknownQuantTypeError(
            f"quant type {quant_type!r} has no {layer_type} scheme; supported for this "
            f"layer type: {registered_quant_types(layer_type) + ['FLOAT']}",
            file=file,
            layer=layer,
        )
    return scheme_cls
