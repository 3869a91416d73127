"""Weighted multi-term losses built from a plain dict or a YAML file (SPEC §5).

A config lists terms; each term names a loss in the registry, a weight, the channels of the
prediction (and target) it reads, and the constructor kwargs::

    losses:
      - function: PerChannelBCEWithLogitsLoss
        weight: 1.0
        pred_slice: "0:3"
        target: affinity
        kwargs: {auto_pos_weight: true, max_pos_weight: 10.0}
      - function: DiceLoss
        weight: 0.5
        pred_slice: "3:5"
        target: label

The registry knows seglosses' own losses (``DiceLoss``, ``MalisLoss``,
``PerChannelBCEWithLogitsLoss``, ``WeightedBCEWithLogitsLoss``), every ``torch.nn`` loss by its
class name (``BCEWithLogitsLoss``, ``CrossEntropyLoss``, ...), every MONAI loss as
``monai.<Name>`` (imported only when used), and the losses registered with :func:`register_loss`.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import importlib
import math
import os
import threading
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["CombinedLoss", "register_loss", "available_losses"]

# seglosses' own losses, resolved lazily from the package so that this module imports (and
# user / torch / MONAI terms work) even while one of them is missing or being rebuilt.
_SEGLOSSES_BUILTINS = (
    "DiceLoss",
    "MalisLoss",
    "PerChannelBCEWithLogitsLoss",
    "WeightedBCEWithLogitsLoss",
)
_USER_REGISTRY: Dict[str, Callable[..., Any]] = {}
_REGISTRY_LOCK = threading.Lock()

_TERM_FIELDS = (
    "function",
    "weight",
    "name",
    "pred_slice",
    "target_slice",
    "target",
    "kwargs",
    "deep_supervision",
)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
def _torch_nn_losses() -> List[str]:
    names = []
    for n in dir(nn):
        obj = getattr(nn, n, None)
        if n.endswith("Loss") and isinstance(obj, type) and issubclass(obj, nn.Module):
            names.append(n)
    return names


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
    names = set(_SEGLOSSES_BUILTINS) | set(_USER_REGISTRY) | set(_torch_nn_losses())
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
                if name in _SEGLOSSES_BUILTINS or name in _torch_nn_losses():
                    raise ValueError(
                        f"register_loss: name {name!r} is a built-in loss; pass override=True to shadow it"
                    )
            _USER_REGISTRY[name] = o
        return o

    if obj is None:
        return _register
    return _register(obj)


def _resolve(name: str, where: str) -> Callable[..., Any]:
    """The class / factory / function a ``function`` name refers to, or a ValueError."""
    if name in _USER_REGISTRY:
        return _USER_REGISTRY[name]
    if name in _SEGLOSSES_BUILTINS:
        try:
            if name in ("PerChannelBCEWithLogitsLoss", "WeightedBCEWithLogitsLoss"):
                return getattr(importlib.import_module("seglosses.bce"), name)
            return getattr(importlib.import_module("seglosses"), name)
        except Exception as e:  # the loss exists in the contract but cannot be loaded here
            raise ValueError(
                f"CombinedLoss: {where}, field 'function': {name!r} is a seglosses loss but could not "
                f"be loaded ({type(e).__name__}: {e}); is the extension built? "
                f"(python setup.py build_ext --inplace)"
            ) from e
    if name.startswith("monai."):
        short = name[len("monai."):]
        try:
            losses = importlib.import_module("monai.losses")
        except Exception as e:
            raise ValueError(
                f"CombinedLoss: {where}, field 'function': {name!r} needs MONAI, which could not be "
                f"imported ({type(e).__name__}: {e})"
            ) from e
        obj = getattr(losses, short, None) if short and not short.startswith("_") else None
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            return obj
        close = difflib.get_close_matches(name, _monai_losses(), n=3, cutoff=0.6)
        raise ValueError(
            f"CombinedLoss: {where}, field 'function': unknown MONAI loss {name!r}"
            + (f"; closest names: {', '.join(close)}" if close else "")
        )
    obj = getattr(nn, name, None) if name.endswith("Loss") else None
    if isinstance(obj, type) and issubclass(obj, nn.Module):
        return obj
    candidates = available_losses()
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    monai_names = _monai_losses()  # only imported on this error path
    if f"monai.{name}" in monai_names:  # a MONAI class named without its prefix
        close = [f"monai.{name}"] + close[:2]
    elif not close:
        close = difflib.get_close_matches(f"monai.{name}", monai_names, n=3, cutoff=0.75)
    hint = f"; closest names: {', '.join(close)}" if close else f"; known names: {', '.join(candidates)}"
    raise ValueError(f"CombinedLoss: {where}, field 'function': unknown loss {name!r}{hint}")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
class _FunctionLoss(nn.Module):
    """Wraps a registered plain function (with its bound kwargs) as a module."""

    def __init__(self, fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
        super().__init__()
        self.fn = functools.partial(fn, **kwargs)
        self._fn_name = getattr(fn, "__name__", repr(fn))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"fn={self._fn_name}"


def _parse_slice(value: Any, where: str, field: str) -> Optional[Tuple[Optional[int], Optional[int]]]:
    """``"a:b"``, ``"a:"``, ``":b"``, ``"a"`` (one channel), an int, or ``[a, b]`` -> (start, stop)."""
    if value is None:
        return None
    err = (
        f"CombinedLoss: {where}, field {field!r}: malformed channel slice {value!r}; "
        f"use 'a:b', 'a:', ':b' or 'a' with integers a < b"
    )
    if isinstance(value, bool):
        raise ValueError(err)
    if isinstance(value, int):
        start, stop = value, (value + 1 if value != -1 else None)
    elif isinstance(value, (list, tuple)):
        if len(value) != 2 or not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in value):
            raise ValueError(err)
        start, stop = value
    elif isinstance(value, slice):
        if value.step not in (None, 1):
            raise ValueError(err)
        start, stop = value.start, value.stop
        if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in (start, stop)):
            raise ValueError(err)
    elif isinstance(value, str):
        parts = value.split(":")
        try:
            if len(parts) == 1:
                start = int(parts[0])
                stop = start + 1 if start != -1 else None
            elif len(parts) == 2:
                start = int(parts[0]) if parts[0].strip() else None
                stop = int(parts[1]) if parts[1].strip() else None
            else:
                raise ValueError(err)
        except ValueError:
            raise ValueError(err) from None
    else:
        raise ValueError(err)
    if start is not None and stop is not None and (start >= 0) == (stop >= 0) and start >= stop:
        raise ValueError(err + " (the range is empty)")
    return (start, stop)


def _slice_text(s: Tuple[Optional[int], Optional[int]]) -> str:
    a, b = s
    return f"{'' if a is None else a}:{'' if b is None else b}"


def _apply_slice(
    t: Tensor, s: Tuple[Optional[int], Optional[int]], where: str, field: str, what: str
) -> Tensor:
    if t.dim() < 2:
        raise ValueError(
            f"CombinedLoss: {where}, field {field!r}: cannot take channels {_slice_text(s)!r} of "
            f"{what} with shape {list(t.shape)} (no channel dim 1)"
        )
    c = t.shape[1]
    start, stop = s
    a = 0 if start is None else (start + c if start < 0 else start)
    b = c if stop is None else (stop + c if stop < 0 else stop)
    if a < 0 or b > c or a >= b:
        raise ValueError(
            f"CombinedLoss: {where}, field {field!r}: slice {_slice_text(s)!r} is beyond the {c} "
            f"channels of {what} (shape {list(t.shape)}) or selects no channel"
        )
    return t[:, a:b]


def _accepted_keywords(fn: Callable[..., Any]) -> Tuple[frozenset, bool]:
    """Keyword names ``fn`` accepts beyond its first two positional arguments, and **kwargs."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return frozenset(), True
    names, var_kw, positional = set(), False, 0
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind is p.VAR_POSITIONAL:
            positional = 2
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            if p.kind is p.POSITIONAL_OR_KEYWORD and positional < 2:
                positional += 1  # pred, target
                continue
            names.add(p.name)
    return frozenset(names), var_kw


def _constructor_params(obj: Callable[..., Any]) -> Tuple[Optional[Dict[str, inspect.Parameter]], bool]:
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


def _tensorize_kwargs(params: Optional[Dict[str, inspect.Parameter]], kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Lists given for tensor-typed constructor arguments (YAML has no tensors) become tensors."""
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


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _resize_nearest(t: Tensor, size: Sequence[int]) -> Tensor:
    """Nearest-neighbour resize of the last ``len(size)`` dims; any dtype, values kept exactly.

    Picks source index ``min(floor(i * in / out), in - 1)``, the rule of
    ``F.interpolate(mode="nearest")``, so integer labels stay integer (and exact).
    """
    n = len(size)
    for k, out_size in enumerate(size):
        dim = t.dim() - n + k
        in_size = t.shape[dim]
        if in_size == out_size:
            continue
        scale = torch.tensor(in_size / out_size, dtype=torch.float32)
        idx = (torch.arange(out_size, dtype=torch.float32) * scale).floor().to(torch.int64)
        idx = idx.clamp(max=in_size - 1).to(t.device)
        t = t.index_select(dim, idx)
    return t


# --------------------------------------------------------------------------------------------
# CombinedLoss
# --------------------------------------------------------------------------------------------
class _Term:
    __slots__ = ("index", "name", "function", "weight", "pred_slice", "target_slice", "target",
                 "deep_supervision", "accepts", "accepts_all", "where")


class CombinedLoss(nn.Module):
    r"""A weighted sum of losses, each on its own channels of the prediction.

    Args:
        cfg: the configuration, in one of three forms:

            - a dict with a ``"losses"`` list (and optionally ``"deep_supervision_weights"``),
            - a plain list of terms,
            - PyTorch Connectomics' nesting ``{"model": {"loss": {"losses": [...]}}}``
              (other keys at those levels are ignored).

            Each term is a dict with the fields:

            - ``function`` (required): a registry name (see the module docstring) or a class.
            - ``weight`` (default 1.0): a number >= 0 multiplying the term.
            - ``name`` (default: ``function``; a repeated default gets ``_2``, ``_3``, ...):
              the key of the term in ``return_terms`` output.
            - ``pred_slice`` / ``target_slice``: channels on dim 1, ``"a:b"``, ``"a:"``,
              ``":b"`` or ``"a"`` (one channel, dim kept); negative indices count from the end.
              Omitted: all channels.
            - ``target``: key into a dict of targets. With a plain tensor target, the key is
              not needed (and not used); with a dict holding exactly one entry it may be omitted.
            - ``kwargs``: constructor arguments of the loss. Lists given for tensor-typed
              arguments (e.g. ``CrossEntropyLoss``'s ``weight``) become tensors.
            - ``deep_supervision`` (default true): with ``false`` the term runs only on the
              full-resolution output.

    Extras: keyword arguments of :meth:`forward` other than ``return_terms`` (``mask``,
    ``gt_seg``, ``weight``, ...) go only to the terms whose ``forward`` takes a keyword of that
    name (or ``**kwargs``); ``None`` values are not passed. A term whose ``pred_slice`` is set
    also slices every extra tensor that has pred's rank and pred's full channel count on dim 1
    (typically a per-channel mask); other extras (e.g. a ``[B, 1, *spatial]`` mask or
    ``gt_seg``) pass as they are.

    Deep supervision: when ``pred`` is a list / tuple of outputs at decreasing scales (the
    first at full resolution), every term runs on every scale, and the loss of scale ``s`` is
    multiplied by ``deep_supervision_weights[s]`` (default ``1, 1/2, 1/4, ...``). Targets and
    extras that are tensors whose trailing dims equal the full-resolution spatial shape are
    resized to each scale by nearest neighbour (integer labels stay exact). ``gt_seg`` only
    reaches scale 0: on lower scales MALIS falls back to connected components of the resized
    target affinities. A term's value (``return_terms``) is the scale-weighted sum of its
    per-scale losses; the total is ``sum(weight_t * value_t)``.

    Shape:
        - pred: ``[B, C, *spatial]``, or a list of such tensors at decreasing scales.
        - target: a tensor, or a dict of tensors addressed by each term's ``target``.
        - output: a scalar (each term must return a scalar).

    Raises:
        ValueError / TypeError: at construction for a missing or empty ``losses``, an unknown
            ``function`` (the message lists the closest names), a malformed slice, a negative
            or non-numeric weight, kwargs the loss does not take, a duplicate ``name``, an
            unknown term field; at call time for a missing target key (the message lists the
            keys), a slice beyond the channels, or a term that does not return a scalar. Every
            message starts with ``CombinedLoss:`` and names the term, the field and the value.

    Example:
        >>> cfg = {"losses": [
        ...     {"function": "PerChannelBCEWithLogitsLoss", "pred_slice": "0:3", "target": "affinity"},
        ...     {"function": "monai.DiceLoss", "weight": 0.5, "pred_slice": "3:5", "target": "label",
        ...      "kwargs": {"softmax": True, "to_onehot_y": True}},
        ... ]}
        >>> loss_fn = CombinedLoss(cfg)
        >>> pred = torch.randn(2, 5, 8, 8, 8, requires_grad=True)
        >>> targets = {"affinity": (torch.rand(2, 3, 8, 8, 8) > 0.5).float(),
        ...            "label": torch.randint(0, 2, (2, 1, 8, 8, 8))}
        >>> total, terms = loss_fn(pred, targets, return_terms=True)
        >>> sorted(terms)
        ['PerChannelBCEWithLogitsLoss', 'monai.DiceLoss']
    """

    def __init__(self, cfg: Union[Mapping[str, Any], Sequence[Mapping[str, Any]]]) -> None:
        super().__init__()
        terms_cfg, ds_weights = self._unwrap(cfg)
        self.deep_supervision_weights: Optional[List[float]] = ds_weights
        self.losses = nn.ModuleList()
        self._terms: List[_Term] = []
        used_names: Dict[str, int] = {}
        explicit = [t.get("name") for t in terms_cfg if isinstance(t, Mapping) and t.get("name") is not None]
        for i, term_cfg in enumerate(terms_cfg):
            term, module = self._build_term(i, term_cfg, used_names, explicit)
            self._terms.append(term)
            self.losses.append(module)

    # ---- construction ----------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: Union[str, "os.PathLike[str]"]) -> "CombinedLoss":
        """Build from a YAML file (any of the forms accepted by the constructor).

        Args:
            path: the YAML file, read with ``yaml.safe_load``.

        Raises:
            ValueError: when the file is empty or not valid YAML, plus every config error of
                the constructor.
        """
        import yaml

        with open(path, "r", encoding="utf-8") as f:
            try:
                cfg = yaml.safe_load(f)
            except yaml.YAMLError as e:
                raise ValueError(f"CombinedLoss: cannot parse YAML file {os.fspath(path)!r}: {e}") from e
        if cfg is None:
            raise ValueError(f"CombinedLoss: YAML file {os.fspath(path)!r} is empty")
        return cls(cfg)

    @staticmethod
    def _unwrap(cfg: Any) -> Tuple[List[Any], Optional[List[float]]]:
        if isinstance(cfg, (list, tuple)):
            terms, container = list(cfg), {}
        elif isinstance(cfg, Mapping):
            container = cfg
            if "losses" not in container and isinstance(container.get("model"), Mapping):
                container = container["model"]
            if "losses" not in container and isinstance(container.get("loss"), Mapping):
                container = container["loss"]
            if "losses" not in container:
                raise ValueError(
                    f"CombinedLoss: config has no 'losses' list (looked at the top level, 'model', "
                    f"'loss' and 'model.loss'); got keys {sorted(map(str, cfg.keys()))}"
                )
            terms = container["losses"]
            if not isinstance(terms, (list, tuple)):
                raise ValueError(f"CombinedLoss: field 'losses' must be a list of terms, got {terms!r}")
            terms = list(terms)
        else:
            raise TypeError(
                f"CombinedLoss: cfg must be a dict with 'losses', a list of terms or "
                f"{{'model': {{'loss': {{'losses': [...]}}}}}}, got {type(cfg).__name__}: {cfg!r}"
            )
        if not terms:
            raise ValueError("CombinedLoss: field 'losses' is empty; give at least one term")
        ds = container.get("deep_supervision_weights") if isinstance(container, Mapping) else None
        if ds is not None:
            if not isinstance(ds, (list, tuple)) or not ds or not all(_is_number(w) for w in ds):
                raise ValueError(
                    f"CombinedLoss: field 'deep_supervision_weights' must be a non-empty list of "
                    f"numbers, got {ds!r}"
                )
            if any(not math.isfinite(w) or w < 0 for w in ds):
                raise ValueError(
                    f"CombinedLoss: field 'deep_supervision_weights' must hold finite numbers >= 0, got {ds!r}"
                )
            ds = [float(w) for w in ds]
        return terms, ds

    def _build_term(
        self, i: int, cfg: Any, used_names: Dict[str, int], explicit: List[Any]
    ) -> Tuple[_Term, nn.Module]:
        if not isinstance(cfg, Mapping):
            raise TypeError(f"CombinedLoss: term {i} must be a dict with a 'function' field, got {cfg!r}")
        fn = cfg.get("function")
        label = cfg.get("name") if cfg.get("name") is not None else (
            fn if isinstance(fn, str) else getattr(fn, "__name__", None))
        where = f"term {i} ({label!r})" if label is not None else f"term {i}"
        unknown = [k for k in cfg if k not in _TERM_FIELDS]
        if unknown:
            k = unknown[0]
            close = difflib.get_close_matches(str(k), _TERM_FIELDS, n=1)
            raise ValueError(
                f"CombinedLoss: {where}, field {k!r}: unknown term field (value {cfg[k]!r})"
                + (f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(_TERM_FIELDS)}")
            )
        if fn is None:
            raise ValueError(f"CombinedLoss: {where}, field 'function': missing; name a loss, e.g. 'DiceLoss'")
        if isinstance(fn, str):
            factory = _resolve(fn, where)
            fn_name = fn
        elif callable(fn):
            factory, fn_name = fn, getattr(fn, "__name__", type(fn).__name__)
        else:
            raise TypeError(f"CombinedLoss: {where}, field 'function': must be a loss name, got {fn!r}")

        # weight
        weight = cfg.get("weight", 1.0)
        if not _is_number(weight):
            raise TypeError(f"CombinedLoss: {where}, field 'weight': must be a number >= 0, got {weight!r}")
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"CombinedLoss: {where}, field 'weight': must be a finite number >= 0, got {weight!r}")

        # name
        name = cfg.get("name")
        if name is not None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"CombinedLoss: {where}, field 'name': must be a non-empty string, got {name!r}")
            if name in used_names:
                raise ValueError(f"CombinedLoss: {where}, field 'name': {name!r} is already used by another term")
            used_names[name] = 1
        else:
            # Default name: the function; repeated (or taken by an explicit name) -> _2, _3, ...
            name, k = fn_name, 1
            while name in used_names or name in explicit:
                k += 1
                name = f"{fn_name}_{k}"
            used_names[name] = 1
        where = f"term {i} ({name!r})"

        # slices, target, deep supervision
        pred_slice = _parse_slice(cfg.get("pred_slice"), where, "pred_slice")
        target_slice = _parse_slice(cfg.get("target_slice"), where, "target_slice")
        target_key = cfg.get("target")
        if target_key is not None and not isinstance(target_key, (str, int)):
            raise ValueError(f"CombinedLoss: {where}, field 'target': must be a key (string), got {target_key!r}")
        ds = cfg.get("deep_supervision", True)
        if not isinstance(ds, bool):
            raise ValueError(f"CombinedLoss: {where}, field 'deep_supervision': must be true or false, got {ds!r}")

        # kwargs -> the loss module
        kwargs = cfg.get("kwargs")
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
            raise ValueError(f"CombinedLoss: {where}, field 'kwargs': must be a mapping of argument names, got {kwargs!r}")
        kwargs = dict(kwargs)
        module = self._construct(factory, fn_name, kwargs, where)

        term = _Term()
        term.index, term.name, term.function, term.weight = i, name, fn_name, float(weight)
        term.pred_slice, term.target_slice, term.target = pred_slice, target_slice, target_key
        term.deep_supervision, term.where = ds, where
        forward = module.forward if not isinstance(module, _FunctionLoss) else module.fn
        term.accepts, term.accepts_all = _accepted_keywords(forward)
        return term, module

    @staticmethod
    def _construct(factory: Callable[..., Any], fn_name: str, kwargs: Dict[str, Any], where: str) -> nn.Module:
        is_function = inspect.isfunction(factory) or inspect.isbuiltin(factory) or isinstance(factory, functools.partial)
        params, var_kw = _constructor_params(factory)
        if is_function and params is not None:
            # A functional loss: its first two parameters are pred and target, not kwargs.
            params = dict(list(params.items())[2:])
        if params is not None and not var_kw:
            bad = [k for k in kwargs if k not in params or k == "self"]
            if bad:
                k = bad[0]
                close = difflib.get_close_matches(k, list(params), n=1)
                raise ValueError(
                    f"CombinedLoss: {where}, field 'kwargs': {fn_name} does not take the argument "
                    f"{k!r} (value {kwargs[k]!r})"
                    + (f"; did you mean {close[0]!r}?" if close else f"; it takes: {', '.join(params) or 'nothing'}")
                )
        if is_function:
            return _FunctionLoss(factory, kwargs)
        kwargs = _tensorize_kwargs(params, kwargs)
        try:
            module = factory(**kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"CombinedLoss: {where}, field 'kwargs': {fn_name}(**{kwargs!r}) failed: {e}"
            ) from e
        if not isinstance(module, nn.Module):
            if not callable(module):
                raise TypeError(f"CombinedLoss: {where}, field 'function': {fn_name}(...) returned a non-callable {module!r}")
            module = _FunctionLoss(module, {})
        return module

    # ---- introspection -----------------------------------------------------------------------
    @property
    def term_names(self) -> List[str]:
        """The names of the terms, in config order (the keys of ``return_terms`` output)."""
        return [t.name for t in self._terms]

    @property
    def term_weights(self) -> Dict[str, float]:
        """``{name: weight}`` of every term."""
        return {t.name: t.weight for t in self._terms}

    def extra_repr(self) -> str:
        parts = []
        for t in self._terms:
            s = f"{t.name}: weight={t.weight}"
            if t.pred_slice is not None:
                s += f", pred_slice={_slice_text(t.pred_slice)!r}"
            if t.target is not None:
                s += f", target={t.target!r}"
            if t.target_slice is not None:
                s += f", target_slice={_slice_text(t.target_slice)!r}"
            if not t.deep_supervision:
                s += ", deep_supervision=False"
            parts.append(s)
        if self.deep_supervision_weights is not None:
            parts.append(f"deep_supervision_weights={self.deep_supervision_weights}")
        return "\n".join(parts)

    # ---- forward -----------------------------------------------------------------------------
    def _select_target(self, term: _Term, target: Any) -> Tensor:
        if isinstance(target, Mapping):
            if term.target is None:
                if len(target) == 1:
                    return next(iter(target.values()))
                raise ValueError(
                    f"CombinedLoss: {term.where}, field 'target': the term names no target key but "
                    f"the targets are a dict with keys {sorted(map(str, target))}; set 'target'"
                )
            if term.target not in target:
                raise ValueError(
                    f"CombinedLoss: {term.where}, field 'target': key {term.target!r} is not among the "
                    f"targets; available keys: {sorted(map(str, target))}"
                )
            return target[term.target]
        return target

    def forward(
        self,
        pred: Union[Tensor, Sequence[Tensor]],
        target: Union[Tensor, Mapping[str, Tensor]],
        return_terms: bool = False,
        **extras: Any,
    ) -> Union[Tensor, Tuple[Tensor, Dict[str, Tensor]]]:
        """The weighted total of all terms.

        Args:
            pred: ``[B, C, *spatial]`` outputs, or a list / tuple of them at decreasing scales
                (deep supervision; the first at full resolution).
            target: a tensor, or a dict of tensors addressed by the terms' ``target`` keys.
            return_terms: also return ``{name: detached value}`` for logging.
            **extras: ``mask``, ``gt_seg``, ``weight``, ...; routed as described in the class
                docstring.

        Returns:
            The total (a scalar tensor), or ``(total, terms)`` with ``return_terms=True``.
        """
        scales = list(pred) if isinstance(pred, (list, tuple)) else [pred]
        if not scales or not all(isinstance(p, Tensor) for p in scales):
            raise TypeError(
                f"CombinedLoss: pred must be a tensor or a non-empty list of tensors, got "
                f"{[type(p).__name__ for p in scales] if isinstance(pred, (list, tuple)) else type(pred).__name__}"
            )
        multi = isinstance(pred, (list, tuple))
        if multi:
            ds_w = self.deep_supervision_weights
            if ds_w is None:
                ds_w = [0.5 ** s for s in range(len(scales))]
            elif len(ds_w) < len(scales):
                raise ValueError(
                    f"CombinedLoss: field 'deep_supervision_weights' has {len(ds_w)} values but pred "
                    f"has {len(scales)} scales"
                )
        else:
            ds_w = [1.0]
        if not isinstance(target, (Tensor, Mapping)):
            raise TypeError(f"CombinedLoss: target must be a tensor or a dict of tensors, got {type(target).__name__}")

        full = scales[0]
        n_sp = full.dim() - 2
        full_spatial = tuple(full.shape[2:])

        def is_spatial(t: Any) -> bool:
            return (isinstance(t, Tensor) and n_sp > 0 and t.dim() >= n_sp + 1
                    and tuple(t.shape[-n_sp:]) == full_spatial)

        resize_cache: Dict[Tuple[int, int], Tensor] = {}

        def at_scale(t: Any, s: int) -> Any:
            if s == 0 or not is_spatial(t):
                return t
            size = tuple(scales[s].shape[2:])
            if len(size) != n_sp or size == full_spatial:
                return t
            key = (id(t), s)
            if key not in resize_cache:
                resize_cache[key] = _resize_nearest(t, size)
            return resize_cache[key]

        total: Optional[Tensor] = None
        values: Dict[str, Tensor] = {}
        for term, module in zip(self._terms, self.losses):
            tgt_full = self._select_target(term, target)
            if not isinstance(tgt_full, Tensor):
                raise TypeError(
                    f"CombinedLoss: {term.where}, field 'target': the target must be a tensor, got "
                    f"{type(tgt_full).__name__}"
                )
            value: Optional[Tensor] = None
            n_scales = len(scales) if (multi and term.deep_supervision) else 1
            for s in range(n_scales):
                if ds_w[s] == 0 and n_scales > 1:
                    continue
                p = scales[s]
                c_full = p.shape[1] if p.dim() >= 2 else None
                if term.pred_slice is not None:
                    p = _apply_slice(p, term.pred_slice, term.where, "pred_slice", f"pred (scale {s})" if multi else "pred")
                t = at_scale(tgt_full, s)
                if term.target_slice is not None:
                    if t.dim() < scales[s].dim():
                        raise ValueError(
                            f"CombinedLoss: {term.where}, field 'target_slice': cannot take channels "
                            f"{_slice_text(term.target_slice)!r} of target "
                            f"{term.target if term.target is not None else ''!r} with shape {list(t.shape)}: "
                            f"it has no channel dim (pred has {scales[s].dim()} dims)"
                        )
                    t = _apply_slice(t, term.target_slice, term.where, "target_slice", f"target {term.target!r}" if term.target is not None else "target")
                kw = {}
                for k, v in extras.items():
                    if v is None or not (term.accepts_all or k in term.accepts):
                        continue
                    if k == "gt_seg" and s > 0:
                        continue  # lower scales use connected components of the resized target
                    v = at_scale(v, s)
                    if (term.pred_slice is not None and isinstance(v, Tensor) and c_full is not None
                            and v.dim() == scales[s].dim() and v.shape[1] == c_full and c_full > 1):
                        v = _apply_slice(v, term.pred_slice, term.where, "pred_slice", f"extra {k!r}")
                    kw[k] = v
                out = module(p, t, **kw)
                if not isinstance(out, Tensor) or out.numel() != 1:
                    raise ValueError(
                        f"CombinedLoss: {term.where}, field 'function': {term.function} returned "
                        f"{'a tensor of shape ' + str(list(out.shape)) if isinstance(out, Tensor) else repr(type(out))}; "
                        f"CombinedLoss needs a scalar (use reduction 'mean' or 'sum')"
                    )
                out = out.reshape(())
                scaled = out if ds_w[s] == 1.0 else out * ds_w[s]
                value = scaled if value is None else value + scaled
            if value is None:  # every scale weight was 0
                value = scales[0].sum() * 0
            values[term.name] = value.detach()
            weighted = value if term.weight == 1.0 else value * term.weight
            total = weighted if total is None else total + weighted
        assert total is not None
        if return_terms:
            return total, values
        return total
