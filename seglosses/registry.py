"""The loss registry: what a CombinedLoss term's ``function`` may name, and how the loss is built.

A name resolves, in this order, to a loss registered with :func:`register_loss`, one of
seglosses' own losses (:data:`SEGLOSSES_LOSSES`), a ``monai.<Name>`` MONAI loss (MONAI is
imported only then), or a ``torch.nn`` loss by its class name. An unknown name is an error that
lists the closest names.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import threading
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

__all__ = ["SEGLOSSES_LOSSES", "available_losses", "build_loss", "register_loss", "resolve"]

# seglosses' own losses, each an attribute of the seglosses package. They are looked up when a
# config names them, so this module (and user, torch and MONAI terms) imports even while one of
# them is missing or being rebuilt.
SEGLOSSES_LOSSES = (
    "DiceCELoss", "DiceLoss", "GeneralizedDiceLoss", "TverskyLoss",
    "MalisLoss",
    "PerChannelBCEWithLogitsLoss",
    "WeightedBCEWithLogitsLoss",
)

_USER_REGISTRY: Dict[str, Callable[..., Any]] = {}
_REGISTRY_LOCK = threading.Lock()


def _torch_nn_losses() -> List[str]:
    return [
        n for n in dir(nn)
        if n.endswith("Loss") and isinstance(getattr(nn, n), type) and issubclass(getattr(nn, n), nn.Module)
    ]


def _monai_losses() -> List[str]:
    try:
        losses = importlib.import_module("monai.losses")
    except Exception:  # MONAI is optional
        return []
    return [
        f"monai.{n}"
        for n in dir(losses)
        if not n.startswith("_") and isinstance(getattr(losses, n, None), type)
        and issubclass(getattr(losses, n), nn.Module)
    ]


def available_losses(include_monai: bool = False) -> List[str]:
    """Names the registry resolves: seglosses', users' and torch.nn losses (and MONAI's).

    Args:
        include_monai: also list ``monai.<Name>`` entries (imports MONAI).

    Returns:
        A sorted list of names usable as a term's ``function``.
    """
    names = set(SEGLOSSES_LOSSES) | set(_USER_REGISTRY) | set(_torch_nn_losses())
    if include_monai:
        names |= set(_monai_losses())
    return sorted(names)


def register_loss(name: str, obj: Optional[Callable[..., Any]] = None, *, override: bool = False):
    """Register a user loss under ``name`` so configs can use it as ``function: name``.

    ``obj`` is either an ``nn.Module`` class (or any factory): the term calls ``obj(**kwargs)``
    and uses the result as the loss; or a plain function ``fn(pred, target, ...)``: the term's
    ``kwargs`` are bound to it. Extras (``mask=``, ``gt_seg=``...) reach the loss only if its
    ``forward`` (or the function) takes them by name.

    Usable directly, ``register_loss("MyLoss", MyLoss)``, or as a decorator::

        @register_loss("MyLoss")
        class MyLoss(nn.Module):
            def forward(self, pred, target, mask=None): ...

    Args:
        name: the registry name; may not start with ``"monai."`` nor shadow a seglosses or
            torch.nn loss (or a previous registration) unless ``override=True``.
        obj: the class / factory / function; omitted for the decorator form.
        override: replace an existing user registration of ``name`` or shadow a built-in name.

    Returns:
        ``obj`` (so the decorator leaves the class unchanged), or the decorator.

    Raises:
        ValueError: for an empty name, a ``monai.`` name, or a clash without ``override``.
        TypeError: when ``name`` is not a string or ``obj`` is not callable.

    Example:
        >>> @register_loss("L1Sum")
        ... class L1Sum(nn.Module):
        ...     def forward(self, pred, target):
        ...         return (pred - target).abs().sum()
        >>> loss_fn = CombinedLoss([{"function": "L1Sum"}])
    """
    if not isinstance(name, str):
        raise TypeError(f"register_loss: name must be a string, got {name!r}")
    if not name or name.strip() != name:
        raise ValueError(f"register_loss: name must be a non-empty string without surrounding spaces, got {name!r}")
    if name.startswith("monai."):
        raise ValueError(f"register_loss: name {name!r} is reserved for MONAI losses ('monai.<Name>')")

    def _register(o: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(o):
            raise TypeError(f"register_loss: obj for {name!r} must be a class or a callable, got {o!r}")
        with _REGISTRY_LOCK:
            if not override:
                if name in _USER_REGISTRY and _USER_REGISTRY[name] is not o:
                    raise ValueError(
                        f"register_loss: name {name!r} is already registered to {_USER_REGISTRY[name]!r}; "
                        f"pass override=True to replace it"
                    )
                if name in SEGLOSSES_LOSSES or name in _torch_nn_losses():
                    raise ValueError(
                        f"register_loss: name {name!r} is a built-in loss; pass override=True to shadow it"
                    )
            _USER_REGISTRY[name] = o
        return o

    if obj is None:
        return _register
    return _register(obj)


def _closest_names(name: str) -> str:
    candidates = available_losses()
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    monai_names = _monai_losses()  # only imported on this error path
    if f"monai.{name}" in monai_names:  # a MONAI class named without its prefix
        close = [f"monai.{name}"] + close[:2]
    elif not close:
        close = difflib.get_close_matches(f"monai.{name}", monai_names, n=3, cutoff=0.75)
    return f"; closest names: {', '.join(close)}" if close else f"; known names: {', '.join(candidates)}"


def resolve(name: str, context: str) -> Callable[..., Any]:
    """The class / factory / function ``name`` refers to.

    Args:
        name: a registry name.
        context: the start of every error message, e.g. ``"CombinedLoss: term 0 ('x'), field 'function'"``.

    Raises:
        ValueError: for an unknown name (with the closest names), or a known one that cannot be
            loaded here (a seglosses loss without its extension, a MONAI loss without MONAI).
    """
    if name in _USER_REGISTRY:
        return _USER_REGISTRY[name]
    if name in SEGLOSSES_LOSSES:
        try:
            return getattr(importlib.import_module("seglosses"), name)
        except Exception as e:  # the loss exists in the contract but cannot be loaded here
            raise ValueError(
                f"{context}: {name!r} is a seglosses loss but could not be loaded ({type(e).__name__}: {e}); "
                f"is the extension built? (python setup.py build_ext --inplace)"
            ) from e
    if name.startswith("monai."):
        short = name[len("monai."):]
        try:
            losses = importlib.import_module("monai.losses")
        except Exception as e:
            raise ValueError(
                f"{context}: {name!r} needs MONAI, which could not be imported ({type(e).__name__}: {e})"
            ) from e
        obj = getattr(losses, short, None) if short and not short.startswith("_") else None
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            return obj
        close = difflib.get_close_matches(name, _monai_losses(), n=3, cutoff=0.6)
        raise ValueError(
            f"{context}: unknown MONAI loss {name!r}" + (f"; closest names: {', '.join(close)}" if close else "")
        )
    obj = getattr(nn, name, None) if name.endswith("Loss") else None
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        return obj
    raise ValueError(f"{context}: unknown loss {name!r}{_closest_names(name)}")


# --------------------------------------------------------------------------------------------
# Building a loss from a factory and its kwargs
# --------------------------------------------------------------------------------------------
class FunctionLoss(nn.Module):
    """A registered plain function ``fn(pred, target, ...)`` with its bound kwargs, as a module."""

    def __init__(self, fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
        super().__init__()
        self.fn = functools.partial(fn, **kwargs)
        self._fn_name = getattr(fn, "__name__", repr(fn))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"fn={self._fn_name}"


def _keyword_parameters(obj: Callable[..., Any]) -> Tuple[Optional[Dict[str, inspect.Parameter]], bool]:
    """Keyword parameters of a class constructor / factory (None if unknown), and **kwargs."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None, True
    params, var_kw = {}, False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            params[p.name] = p
    return params, var_kw


def _lists_to_tensors(params: Optional[Dict[str, inspect.Parameter]], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Lists given for tensor-typed constructor arguments become tensors (YAML has no tensors).

    "Tensor-typed" is read from the annotation (e.g. ``CrossEntropyLoss(weight: Optional[Tensor])``);
    an annotation that also admits a sequence (MONAI's ``Sequence[float] | Tensor``) keeps the list.
    """
    if not params:
        return kwargs
    out = dict(kwargs)
    for k, v in kwargs.items():
        p = params.get(k)
        if p is None or not isinstance(v, (list, tuple)) or not v:
            continue
        ann = p.annotation
        text = ann if isinstance(ann, str) else repr(ann)
        if "Tensor" in text and "Sequence" not in text and "list" not in text.lower():
            try:
                t = torch.tensor(v)
            except (TypeError, ValueError, RuntimeError):
                continue
            if "weight" in k and not t.is_floating_point():
                t = t.to(torch.get_default_dtype())
            out[k] = t
    return out


def build_loss(factory: Callable[..., Any], fn_name: str, kwargs: Dict[str, Any], context: str) -> nn.Module:
    """``factory(**kwargs)`` as an ``nn.Module`` (a plain function gets its kwargs bound).

    Args:
        factory: what :func:`resolve` returned, or a class given directly in the config.
        fn_name: its name, for messages.
        kwargs: the constructor arguments (plain values, as from YAML).
        context: the start of every error message, e.g. ``"CombinedLoss: term 0 ('x'), field 'kwargs'"``.

    Raises:
        ValueError: for an argument the factory does not take (with the closest name) or when
            the constructor rejects the values.
        TypeError: when the factory returns something that is not callable.
    """
    is_function = inspect.isfunction(factory) or inspect.isbuiltin(factory) or isinstance(factory, functools.partial)
    params, var_kw = _keyword_parameters(factory)
    if is_function and params is not None:
        # A functional loss: its first two parameters are pred and target, not kwargs.
        params = dict(list(params.items())[2:])
    if params is not None and not var_kw:
        bad = [k for k in kwargs if k not in params or k == "self"]
        if bad:
            k = bad[0]
            close = difflib.get_close_matches(k, list(params), n=1)
            raise ValueError(
                f"{context}: {fn_name} does not take the argument {k!r} (value {kwargs[k]!r})"
                + (f"; did you mean {close[0]!r}?" if close else f"; it takes: {', '.join(params) or 'nothing'}")
            )
    if is_function:
        return FunctionLoss(factory, kwargs)
    kwargs = _lists_to_tensors(params, kwargs)
    try:
        module = factory(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{context}: {fn_name}(**{kwargs!r}) failed: {e}") from e
    if not isinstance(module, nn.Module):
        if not callable(module):
            raise TypeError(f"{context}: {fn_name}(...) returned a non-callable {module!r}")
        module = FunctionLoss(module, {})
    return module
