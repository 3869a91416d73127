"""CombinedLoss configs: parsed and validated once into frozen dataclasses (SPEC §5).

A config is a dict with a ``losses`` list (and optionally ``deep_supervision_weights``), a plain
list of terms, or PyTorch Connectomics' nesting ``{"model": {"loss": {"losses": [...]}}}``, from
Python, YAML or OmegaConf. Every mistake is reported here, at construction, naming the term and
the field; an unknown key gets the closest valid names.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from torch import Tensor

from ._plain import to_plain

__all__ = ["ChannelSlice", "LossConfig", "TermConfig", "load_yaml", "parse_config"]

# The fields of a term. PyTorch Connectomics spells deep_supervision "apply_deep_supervision".
TERM_FIELDS = ("function", "weight", "name", "pred_slice", "target_slice", "target", "kwargs", "deep_supervision")
TERM_ALIASES = {"apply_deep_supervision": "deep_supervision"}
# PyTorch Connectomics' short names of the channel slices (see _pytc_selectors).
PYTC_TERM_FIELDS = ("pred",)

# The keys of the mapping that holds "losses". Besides seglosses' own, the fields of PyTorch
# Connectomics' loss section, so that its model.loss loads as it is: deep_supervision (there it
# switches deep supervision on; here a list of outputs does), the logit clamp it applies before
# every term, and loss_balancing, which seglosses does not implement (accepted only when off).
CONFIG_KEYS = ("losses", "deep_supervision_weights")
PYTC_CONFIG_KEYS = ("deep_supervision", "deep_supervision_clamp_min", "deep_supervision_clamp_max", "loss_balancing")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _unknown_key(where: str, key: Any, value: Any, valid: Sequence[str], what: str) -> ValueError:
    close = difflib.get_close_matches(str(key), valid, n=2)
    return ValueError(
        f"CombinedLoss: {where}field {key!r}: unknown {what} (value {value!r})"
        + (f"; did you mean {' or '.join(map(repr, close))}?" if close else f"; known fields: {', '.join(valid)}")
    )


# --------------------------------------------------------------------------------------------
# Channel slices
# --------------------------------------------------------------------------------------------
class ChannelSlice(NamedTuple):
    """Channels ``start:stop`` of dim 1 (either may be None; negative counts from the end)."""

    start: Optional[int]
    stop: Optional[int]

    def __str__(self) -> str:
        return f"{'' if self.start is None else self.start}:{'' if self.stop is None else self.stop}"

    @classmethod
    def parse(cls, value: Any, where: str, field: str) -> Optional["ChannelSlice"]:
        """``"a:b"``, ``"a:"``, ``":b"``, ``"a"`` (one channel), an int, ``[a, b]`` or a slice."""
        if value is None:
            return None
        err = (
            f"CombinedLoss: {where}, field {field!r}: malformed channel slice {value!r}; "
            f"use 'a:b', 'a:', ':b' or 'a' with integers a < b"
        )

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if isinstance(value, bool):
            raise ValueError(err)
        if is_int(value):
            start, stop = value, (value + 1 if value != -1 else None)
        elif isinstance(value, (list, tuple)):
            if len(value) != 2 or not all(v is None or is_int(v) for v in value):
                raise ValueError(err)
            start, stop = value
        elif isinstance(value, slice):
            start, stop = value.start, value.stop
            if value.step not in (None, 1) or not all(v is None or is_int(v) for v in (start, stop)):
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
        return cls(start, stop)

    def apply(self, t: Tensor, where: str, field: str, what: str) -> Tensor:
        """``t[:, start:stop]``, or an error naming the term when t has no such channels."""
        if t.dim() < 2:
            raise ValueError(
                f"CombinedLoss: {where}, field {field!r}: cannot take channels {str(self)!r} of "
                f"{what} with shape {list(t.shape)} (no channel dim 1)"
            )
        c = t.shape[1]
        a = 0 if self.start is None else (self.start + c if self.start < 0 else self.start)
        b = c if self.stop is None else (self.stop + c if self.stop < 0 else self.stop)
        if a < 0 or b > c or a >= b:
            raise ValueError(
                f"CombinedLoss: {where}, field {field!r}: slice {str(self)!r} is beyond the {c} "
                f"channels of {what} (shape {list(t.shape)}) or selects no channel"
            )
        return t[:, a:b]


# --------------------------------------------------------------------------------------------
# Terms and the whole config
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TermConfig:
    """One validated term of a CombinedLoss config.

    Attributes:
        index: the term's position in the config.
        name: its key in ``return_terms`` output (the function name unless given; a repeated
            default gets ``_2``, ``_3``, ...).
        function: the registry name, or the class / factory given in the config.
        weight: a finite number >= 0.
        pred_slice, target_slice: channels of pred / the target, or None for all.
        target: the key into a dict of targets, or None.
        deep_supervision: whether the term runs on every output scale.
        kwargs: the loss's constructor arguments (read-only).
    """

    index: int
    name: str
    function: Union[str, Callable[..., Any]]
    weight: float = 1.0
    pred_slice: Optional[ChannelSlice] = None
    target_slice: Optional[ChannelSlice] = None
    target: Optional[str] = None
    deep_supervision: bool = True
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=lambda: types.MappingProxyType({}))

    @property
    def function_name(self) -> str:
        return self.function if isinstance(self.function, str) else getattr(self.function, "__name__", repr(self.function))

    @property
    def where(self) -> str:
        """``term i ('name')``, the start of every message about this term."""
        return f"term {self.index} ({self.name!r})"

    def select_target(self, target: Union[Tensor, Mapping[str, Tensor]]) -> Tensor:
        """The term's target: ``target[self.target]`` from a dict, or the tensor itself."""
        if isinstance(target, Mapping):
            if self.target is None:
                if len(target) != 1:
                    raise ValueError(
                        f"CombinedLoss: {self.where}, field 'target': the term names no target key but "
                        f"the targets are a dict with keys {sorted(map(str, target))}; set 'target'"
                    )
                target = next(iter(target.values()))
            elif self.target not in target:
                raise ValueError(
                    f"CombinedLoss: {self.where}, field 'target': key {self.target!r} is not among the "
                    f"targets; available keys: {sorted(map(str, target))}"
                )
            else:
                target = target[self.target]
        if not isinstance(target, Tensor):
            raise TypeError(
                f"CombinedLoss: {self.where}, field 'target': the target must be a tensor, got {type(target).__name__}"
            )
        return target


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """A validated CombinedLoss config.

    Attributes:
        terms: the terms, in config order.
        deep_supervision_weights: one weight per output scale, or None for ``1, 1/2, 1/4, ...``.
        logit_clamp: ``(min, max)`` applied to pred before every term (PyTorch Connectomics'
            ``deep_supervision_clamp_min`` / ``_max``; either may be None), or None.
    """

    terms: Tuple[TermConfig, ...]
    deep_supervision_weights: Optional[Tuple[float, ...]] = None
    logit_clamp: Optional[Tuple[Optional[float], Optional[float]]] = None


def _find_container(cfg: Any) -> Tuple[List[Any], Mapping[str, Any]]:
    """The list of terms and the mapping that holds it (empty for a plain list)."""
    if isinstance(cfg, (list, tuple)):
        return list(cfg), {}
    if not isinstance(cfg, Mapping):
        raise TypeError(
            f"CombinedLoss: cfg must be a dict with 'losses', a list of terms or "
            f"{{'model': {{'loss': {{'losses': [...]}}}}}}, got {type(cfg).__name__}: {cfg!r}"
        )
    container = cfg
    # PyTorch Connectomics' nesting; the other keys of model (and of the root) are not ours.
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
    return list(terms), container


def _number_list(key: str, value: Any) -> Tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not value or not all(_is_number(w) for w in value):
        raise ValueError(f"CombinedLoss: field {key!r} must be a non-empty list of numbers, got {value!r}")
    if any(not math.isfinite(w) or w < 0 for w in value):
        raise ValueError(f"CombinedLoss: field {key!r} must hold finite numbers >= 0, got {value!r}")
    return tuple(float(w) for w in value)


def _parse_container_keys(container: Mapping[str, Any]) -> Dict[str, Any]:
    """deep_supervision_weights and logit_clamp from the mapping that holds 'losses'."""
    for key in container:
        if key not in CONFIG_KEYS and key not in PYTC_CONFIG_KEYS:
            raise _unknown_key("", key, container[key], CONFIG_KEYS + PYTC_CONFIG_KEYS, "config key")
    ds = container.get("deep_supervision")
    if ds is not None and not isinstance(ds, bool):
        raise ValueError(f"CombinedLoss: field 'deep_supervision' must be true or false, got {ds!r}")
    balancing = container.get("loss_balancing")
    strategy = balancing.get("strategy") if isinstance(balancing, Mapping) else balancing
    if strategy not in (None, "none"):
        raise ValueError(
            f"CombinedLoss: field 'loss_balancing': seglosses has no adaptive loss weighting "
            f"(PyTorch Connectomics' {strategy!r}); remove the field or set its strategy to null"
        )
    clamp = []
    for key in ("deep_supervision_clamp_min", "deep_supervision_clamp_max"):
        v = container.get(key)
        if v is not None and (not _is_number(v) or math.isnan(v)):
            raise ValueError(f"CombinedLoss: field {key!r} must be a number, got {v!r}")
        clamp.append(None if v is None else float(v))
    if clamp[0] is not None and clamp[1] is not None and clamp[0] > clamp[1]:
        raise ValueError(
            f"CombinedLoss: field 'deep_supervision_clamp_min' ({clamp[0]}) is above "
            f"'deep_supervision_clamp_max' ({clamp[1]})"
        )
    weights = container.get("deep_supervision_weights")
    return {
        "deep_supervision_weights": None if weights is None else _number_list("deep_supervision_weights", weights),
        "logit_clamp": None if clamp == [None, None] else tuple(clamp),
    }


def _is_channel_selector(value: Any) -> bool:
    """Whether a term's ``target`` / ``pred`` value is PyTorch Connectomics' channel selector (an
    int, or a string such as ``"0:3"`` or ``"2"``) rather than a key into a dict of targets."""
    if isinstance(value, int) and not isinstance(value, bool):
        return True
    if not isinstance(value, str):
        return False
    text = value.strip()
    return ":" in text or text.lstrip("-").isdigit()


def _pytc_selectors(where: str, fields: Dict[str, Any]) -> Dict[str, Any]:
    """PyTorch Connectomics spells ``pred_slice`` / ``target_slice`` as ``pred`` / ``target``
    (its channel selectors). A ``target`` that is a channel selector is therefore read as
    ``target_slice`` (taken as a dict key it would be silently ignored for a plain tensor target,
    or fail for a dict); a plain string stays seglosses' key into a dict of targets."""
    fields = dict(fields)
    for short, full in (("pred", "pred_slice"), ("target", "target_slice")):
        if short not in fields or (short == "target" and not _is_channel_selector(fields[short])):
            continue
        if fields.get(full) is not None:
            raise ValueError(
                f"CombinedLoss: {where}, field {short!r}: {fields[short]!r} is a channel selector (PyTorch "
                f"Connectomics' spelling of {full!r}), but {full!r} is given too ({fields[full]!r}); keep one"
            )
        fields[full] = fields.pop(short)
    return fields


def _parse_term(i: int, raw: Mapping[str, Any], name: str) -> TermConfig:
    where = f"term {i} ({name!r})"
    fields = {TERM_ALIASES.get(k, k): v for k, v in raw.items()}
    if len(fields) < len(raw):
        raise ValueError(
            f"CombinedLoss: {where}, field 'deep_supervision': given twice (also as 'apply_deep_supervision')"
        )
    fields = _pytc_selectors(where, fields)
    function = fields["function"]
    weight = fields.get("weight", 1.0)
    if not _is_number(weight):
        raise TypeError(f"CombinedLoss: {where}, field 'weight': must be a number >= 0, got {weight!r}")
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"CombinedLoss: {where}, field 'weight': must be a finite number >= 0, got {weight!r}")
    target = fields.get("target")
    if target is not None and not isinstance(target, str):
        raise ValueError(f"CombinedLoss: {where}, field 'target': must be a key (string), got {target!r}")
    ds = fields.get("deep_supervision", True)
    if not isinstance(ds, bool):
        raise ValueError(f"CombinedLoss: {where}, field 'deep_supervision': must be true or false, got {ds!r}")
    kwargs = fields.get("kwargs")
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError(f"CombinedLoss: {where}, field 'kwargs': must be a mapping of argument names, got {kwargs!r}")
    return TermConfig(
        index=i,
        name=name,
        function=function,
        weight=float(weight),
        pred_slice=ChannelSlice.parse(fields.get("pred_slice"), where, "pred_slice"),
        target_slice=ChannelSlice.parse(fields.get("target_slice"), where, "target_slice"),
        target=target,
        deep_supervision=ds,
        kwargs=types.MappingProxyType(dict(kwargs)),
    )


def _check_term_shape(i: int, raw: Any) -> str:
    """The term's label for messages; rejects a non-dict, unknown fields and a missing function."""
    if not isinstance(raw, Mapping):
        raise TypeError(f"CombinedLoss: term {i} must be a dict with a 'function' field, got {raw!r}")
    fn = raw.get("function")
    label = raw.get("name") if raw.get("name") is not None else (
        fn if isinstance(fn, str) else getattr(fn, "__name__", None))
    where = f"term {i} ({label!r}), " if label is not None else f"term {i}, "
    for key in raw:
        if key not in TERM_FIELDS and key not in TERM_ALIASES and key not in PYTC_TERM_FIELDS:
            raise _unknown_key(where, key, raw[key], TERM_FIELDS, "term field")
    if fn is None:
        raise ValueError(f"CombinedLoss: {where}field 'function': missing; name a loss, e.g. 'DiceLoss'")
    if not isinstance(fn, str) and not callable(fn):
        raise TypeError(f"CombinedLoss: {where}field 'function': must be a loss name, got {fn!r}")
    return label


def _term_names(raws: Sequence[Mapping[str, Any]]) -> List[str]:
    """Explicit names (unique), else the function name, then ``_2``, ``_3``, ... for repeats."""
    explicit = [t.get("name") for t in raws if t.get("name") is not None]
    used: set = set()
    names = []
    for i, raw in enumerate(raws):
        name = raw.get("name")
        if name is not None:
            where = f"term {i} ({name!r})"
            if not isinstance(name, str) or not name:
                raise ValueError(f"CombinedLoss: {where}, field 'name': must be a non-empty string, got {name!r}")
            if name in used:
                raise ValueError(f"CombinedLoss: {where}, field 'name': {name!r} is already used by another term")
        else:
            fn = raw["function"]
            base = fn if isinstance(fn, str) else getattr(fn, "__name__", type(fn).__name__)
            name, k = base, 1
            while name in used or name in explicit:  # a default steps aside for an explicit name
                k += 1
                name = f"{base}_{k}"
        used.add(name)
        names.append(name)
    return names


def parse_config(cfg: Any) -> LossConfig:
    """Validates a CombinedLoss config (any of the accepted forms) into a :class:`LossConfig`.

    Raises:
        ValueError / TypeError: naming the term, the field and the value; unknown keys and term
            fields come with the closest valid names.
    """
    raws, container = _find_container(to_plain(cfg))
    if not raws:
        raise ValueError("CombinedLoss: field 'losses' is empty; give at least one term")
    options = _parse_container_keys(container)
    for i, raw in enumerate(raws):
        _check_term_shape(i, raw)
    names = _term_names(raws)
    terms = tuple(_parse_term(i, raw, name) for i, (raw, name) in enumerate(zip(raws, names)))
    return LossConfig(terms=terms, **options)


def load_yaml(path: Union[str, "os.PathLike[str]"]) -> Any:
    """The config in a YAML file, read with ``yaml.safe_load``.

    Raises:
        FileNotFoundError / OSError: naming the file, when it cannot be read.
        ValueError: when it is empty or not valid YAML.
        ImportError: when PyYAML is not installed (with the command that installs it).
    """
    fn = "CombinedLoss.from_yaml"
    try:
        import yaml
    except ImportError as e:
        raise ImportError(
            f"{fn} needs PyYAML, which is not installed: pip install pyyaml "
            f"(pip installs it with seglosses; `python setup.py install` does not)"
        ) from e
    shown = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{fn}: no such config file {shown!r} (resolved to {os.path.abspath(shown)!r})") from e
    except OSError as e:
        raise type(e)(f"{fn}: cannot read config file {shown!r}: {e.strerror or e}") from e
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"CombinedLoss: cannot parse YAML file {shown!r}: {e}") from e
    if cfg is None:
        raise ValueError(f"CombinedLoss: YAML file {shown!r} is empty")
    return cfg
