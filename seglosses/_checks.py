"""Argument validation shared by the public functions. Every message starts with the name of
the public function, then names the argument and shows the value received."""

from __future__ import annotations

import numbers
from typing import Any, Sequence

import torch

INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def check_tensor(fn: str, name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_float_tensor(fn: str, name: str, value: Any) -> torch.Tensor:
    check_tensor(fn, name, value)
    if not value.is_floating_point():
        raise TypeError(f"{fn}: {name} must be a floating point tensor, got dtype {value.dtype}")
    return value


def check_label_tensor(fn: str, name: str, value: Any) -> torch.Tensor:
    check_tensor(fn, name, value)
    if value.dtype not in INT_DTYPES:
        raise TypeError(
            f"{fn}: {name} must hold integer labels (uint8, int8, int16, int32 or int64), got dtype {value.dtype}"
        )
    return value


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
