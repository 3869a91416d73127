"""Argument validation shared by the public functions. Every message starts with the name of
the public function, then names the argument and shows the value received."""

from __future__ import annotations

import math
import numbers
from typing import Any, Sequence

import torch

INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
# Segmentation labels (MALIS): also the wide unsigned types, as connected-components tools
# (PyTorch Connectomics among them) produce uint64.
SEG_DTYPES = INT_DTYPES + (torch.uint16, torch.uint32, torch.uint64)


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type, catchable both as ``TypeError`` and as ``ValueError``.

    PyTorch Connectomics raises ``ValueError`` for every bad MalisLoss option, wrong types
    included, so code written against it catches ``ValueError``; seglosses says ``TypeError``.
    """


def check_tensor(fn: str, name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_float_tensor(fn: str, name: str, value: Any) -> torch.Tensor:
    check_tensor(fn, name, value)
    if not value.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating point tensor, got dtype {value.dtype}")
    return value


def check_real_tensor(fn: str, name: str, value: Any) -> torch.Tensor:
    """A tensor of floats, integers or bools (no complex numbers)."""
    check_tensor(fn, name, value)
    if value.is_complex():
        raise TypeError(f"{fn}: {name} must hold real numbers (float, integer or bool), got dtype {value.dtype}")
    return value


def check_label_tensor(fn: str, name: str, value: Any, dtypes: Sequence[torch.dtype] = INT_DTYPES) -> torch.Tensor:
    check_tensor(fn, name, value)
    if value.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{fn}: {name} must hold integer labels ({names}), got dtype {value.dtype}")
    return value


def check_number(fn: str, name: str, value: Any, allow_inf: bool = False) -> float:
    """A real number (not a bool), finite unless ``allow_inf``; NaN is always rejected."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{fn}: {name} must be a number, got {value!r}")
    if math.isnan(value) or (not allow_inf and math.isinf(value)):
        raise ValueError(f"{fn}: {name} must be a {'' if allow_inf else 'finite '}number, got {value!r}")
    return float(value)


def check_has_data(fn: str, name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """A meta tensor (shape only) cannot be read when the computation runs on real data."""
    if value.device.type == "meta" and ref.device.type != "meta":
        raise ValueError(
            f"{fn}: {name} is a meta tensor (a shape without data) but {ref_name} is on {ref.device}; "
            f"pass {name} with its data"
        )


def check_finite(fn: str, name: str, value: torch.Tensor) -> None:
    """Rejects NaN / inf, naming the first bad value and its index.

    Reads the data (one pass and a host sync), so it is skipped for meta tensors and while
    torch.compile traces: a data-dependent branch would break the graph.
    """
    if value.device.type == "meta" or torch.compiler.is_compiling() or not value.is_floating_point():
        return
    bad = ~torch.isfinite(value)
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"{fn}: {name} must be finite, got {float(value[index])} at index {index} "
            f"({int(bad.sum())} non-finite values)"
        )


def check_int(fn: str, name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{fn}: {name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{fn}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_choice(fn: str, name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{fn}: {name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_same_device(fn: str, name: str, value: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if value.device != ref.device:
        raise ValueError(f"{fn}: {name} must be on {ref_name}'s device {ref.device}, got {value.device}")
