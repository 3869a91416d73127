"""Weighted multi-term losses built from a plain dict or a YAML file (SPEC §5).

The combinator: each term of a validated config (:mod:`seglosses.config`) holds a loss built
from the registry (:mod:`seglosses.registry`); a call selects each term's target, routes the
extras its loss takes, applies its channel slices and runs it on every output scale
(:mod:`seglosses.deep_supervision`), then sums the weighted terms.
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple, Union

from torch import Tensor, nn

from .config import LossConfig, TermConfig, load_yaml, parse_config
from .deep_supervision import deep_supervised
from .registry import FunctionLoss, available_losses, build_loss, register_loss, resolve

__all__ = ["CombinedLoss", "register_loss", "available_losses"]


def _accepted_keywords(fn: Callable[..., Any]) -> Tuple[FrozenSet[str], bool]:
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


def _with_context(exc: Exception, context: str) -> Exception:
    """``exc`` with ``context`` in front of its message, as the same exception type.

    Falls back to a note on the original exception (shown in its traceback) for an exception
    type whose constructor does not take a single message.
    """
    message = f"{context}: {exc}"
    try:
        new = type(exc)(message)
    except Exception:
        new = None
    if new is None or str(new) != message:
        if hasattr(exc, "add_note"):
            exc.add_note(context)
        return exc
    new.__cause__ = exc
    return new.with_traceback(exc.__traceback__)


class _Routing:
    """Which extras a term's loss takes (by the names of its forward's keywords)."""

    def __init__(self, module: nn.Module) -> None:
        forward = module.fn if isinstance(module, FunctionLoss) else module.forward
        self.accepts, self.accepts_all = _accepted_keywords(forward)

    def select(self, extras: Mapping[str, Any]) -> Dict[str, Any]:
        return {k: v for k, v in extras.items() if v is not None and (self.accepts_all or k in self.accepts)}


class CombinedLoss(nn.Module):
    r"""A weighted sum of losses, each on its own channels of the prediction.

    Args:
        cfg: the configuration, in one of three forms:

            - a dict with a ``"losses"`` list (and optionally ``"deep_supervision_weights"``),
            - a plain list of terms,
            - PyTorch Connectomics' nesting ``{"model": {"loss": {"losses": [...]}}}``
              (other keys of ``model`` and of the root are not read).

            The mapping that holds ``losses`` may also hold PyTorch Connectomics' loss-section
            keys: ``deep_supervision`` (accepted; here a list of outputs turns deep supervision
            on), ``deep_supervision_clamp_min`` / ``_max`` (pred is clamped to them before every
            term, as PyTorch Connectomics does) and ``loss_balancing`` (only with no strategy).
            Any other key is an error that names the closest valid keys. OmegaConf
            ``DictConfig`` / ``ListConfig`` values are accepted anywhere.

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
            - ``deep_supervision`` (default true; PyTorch Connectomics' ``apply_deep_supervision``
              also works): with ``false`` the term runs only on the full-resolution output.

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
    resized to each scale by nearest neighbour (integer labels stay exact). Extras a loss names
    in its ``full_resolution_extras`` class attribute (MalisLoss: ``gt_seg``) reach scale 0
    only: on lower scales MALIS falls back to connected components of the resized target
    affinities. (See :class:`seglosses.DeepSupervisionLoss` for the same on a single loss.)
    A term's value (``return_terms``) is the scale-weighted sum of its
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
            An error a term's loss raises at call time keeps its type and gets the term's
            index and name in front of its message.

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

    def __init__(self, cfg: Union[Mapping[str, Any], Sequence[Mapping[str, Any]], LossConfig]) -> None:
        super().__init__()
        self.config: LossConfig = cfg if isinstance(cfg, LossConfig) else parse_config(cfg)
        self.losses = nn.ModuleList(self._build(term) for term in self.config.terms)
        self._routing = [_Routing(m) for m in self.losses]

    @staticmethod
    def _build(term: TermConfig) -> nn.Module:
        context = f"CombinedLoss: {term.where}, field"
        factory = resolve(term.function, f"{context} 'function'") if isinstance(term.function, str) else term.function
        return build_loss(factory, term.function_name, dict(term.kwargs), f"{context} 'kwargs'")

    @classmethod
    def from_yaml(cls, path: Union[str, "os.PathLike[str]"]) -> "CombinedLoss":
        """Build from a YAML file (any of the forms accepted by the constructor).

        Args:
            path: the YAML file, read with ``yaml.safe_load``.

        Raises:
            FileNotFoundError / OSError: naming the file when it cannot be read.
            ValueError: when the file is empty or not valid YAML, plus every config error of
                the constructor.
            ImportError: when PyYAML is missing (the message says ``pip install pyyaml``).
        """
        return cls(load_yaml(path))

    # ---- introspection -----------------------------------------------------------------------
    @property
    def term_names(self) -> List[str]:
        """The names of the terms, in config order (the keys of ``return_terms`` output)."""
        return [t.name for t in self.config.terms]

    @property
    def term_weights(self) -> Dict[str, float]:
        """``{name: weight}`` of every term."""
        return {t.name: t.weight for t in self.config.terms}

    @property
    def deep_supervision_weights(self) -> Optional[List[float]]:
        weights = self.config.deep_supervision_weights
        return None if weights is None else list(weights)

    def extra_repr(self) -> str:
        parts = []
        for t in self.config.terms:
            s = f"{t.name}: weight={t.weight}"
            if t.pred_slice is not None:
                s += f", pred_slice={str(t.pred_slice)!r}"
            if t.target is not None:
                s += f", target={t.target!r}"
            if t.target_slice is not None:
                s += f", target_slice={str(t.target_slice)!r}"
            if not t.deep_supervision:
                s += ", deep_supervision=False"
            parts.append(s)
        if self.config.deep_supervision_weights is not None:
            parts.append(f"deep_supervision_weights={list(self.config.deep_supervision_weights)}")
        return "\n".join(parts)

    # ---- forward -----------------------------------------------------------------------------
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
        multi = isinstance(pred, (list, tuple))
        scales = list(pred) if multi else [pred]
        if not scales or not all(isinstance(p, Tensor) for p in scales):
            got = [type(p).__name__ for p in scales] if multi else type(pred).__name__
            raise TypeError(f"CombinedLoss: pred must be a tensor or a non-empty list of tensors, got {got}")
        if not isinstance(target, (Tensor, Mapping)):
            raise TypeError(f"CombinedLoss: target must be a tensor or a dict of tensors, got {type(target).__name__}")
        weights = self._scale_weights(len(scales)) if multi else (1.0,)
        if self.config.logit_clamp is not None:
            scales = [p.clamp(*self.config.logit_clamp) for p in scales]

        total: Optional[Tensor] = None
        values: Dict[str, Tensor] = {}
        for term, module, routing in zip(self.config.terms, self.losses, self._routing):
            term_scales = scales if term.deep_supervision else scales[:1]
            value = deep_supervised(
                functools.partial(self._run_term, term, module, multi),
                term_scales,
                term.select_target(target),
                weights,
                getattr(module, "full_resolution_extras", ()),
                **routing.select(extras),
            )
            values[term.name] = value.detach()
            weighted = value if term.weight == 1.0 else value * term.weight
            total = weighted if total is None else total + weighted
        assert total is not None  # a config has at least one term
        return (total, values) if return_terms else total

    def _scale_weights(self, levels: int) -> Tuple[float, ...]:
        weights = self.config.deep_supervision_weights
        if weights is None:
            return tuple(0.5 ** s for s in range(levels))
        if len(weights) < levels:
            raise ValueError(
                f"CombinedLoss: field 'deep_supervision_weights' has {len(weights)} values but pred "
                f"has {levels} scales"
            )
        return weights

    @staticmethod
    def _run_term(term: TermConfig, module: nn.Module, multi: bool, pred: Tensor, target: Tensor, **extras: Any) -> Tensor:
        """One term at one scale: its channels of pred, target and per-channel extras, its loss,
        a scalar check. An error the loss raises gets the term in front of its message."""
        where = term.where
        channels = pred.shape[1] if pred.dim() >= 2 else None
        what = f"pred (scale shape {list(pred.shape)})" if multi else "pred"
        p = pred if term.pred_slice is None else term.pred_slice.apply(pred, where, "pred_slice", what)
        t = target
        if term.target_slice is not None:
            if t.dim() < pred.dim():
                raise ValueError(
                    f"CombinedLoss: {where}, field 'target_slice': cannot take channels "
                    f"{str(term.target_slice)!r} of target {term.target if term.target is not None else ''!r} "
                    f"with shape {list(t.shape)}: it has no channel dim (pred has {pred.dim()} dims)"
                )
            shown = f"target {term.target!r}" if term.target is not None else "target"
            t = term.target_slice.apply(t, where, "target_slice", shown)
        if term.pred_slice is not None and channels is not None and channels > 1:
            # An extra with pred's rank and pred's channels (a per-channel mask) is sliced like pred.
            extras = {
                k: term.pred_slice.apply(v, where, "pred_slice", f"extra {k!r}")
                if isinstance(v, Tensor) and v.dim() == pred.dim() and v.shape[1] == channels else v
                for k, v in extras.items()
            }
        try:
            out = module(p, t, **extras)
        except Exception as e:
            if str(e).startswith("CombinedLoss:"):
                raise
            raise _with_context(e, f"CombinedLoss: {where}, {term.function_name} on pred {list(p.shape)}") from e
        if not isinstance(out, Tensor) or out.numel() != 1:
            got = f"a tensor of shape {list(out.shape)}" if isinstance(out, Tensor) else repr(type(out))
            raise ValueError(
                f"CombinedLoss: {where}, field 'function': {term.function_name} returned {got}; "
                f"CombinedLoss needs a scalar (use reduction 'mean' or 'sum')"
            )
        return out.reshape(())
