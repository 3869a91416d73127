"""OmegaConf containers as plain Python values.

PyTorch Connectomics hands its configs around as OmegaConf ``DictConfig`` / ``ListConfig``
objects, whose lists are not ``list`` and whose scalars may be interpolations. seglosses turns
them into plain dicts and lists once, where a config or an argument comes in, so that the code
after that sees only Python containers. OmegaConf stays optional: a value can only be an OmegaConf
container when the ``omegaconf`` module has been imported, so nothing is imported here.
"""

from __future__ import annotations

import sys
from typing import Any


def _omegaconf_container(value: Any) -> bool:
    omegaconf = sys.modules.get("omegaconf")
    return omegaconf is not None and isinstance(value, (omegaconf.DictConfig, omegaconf.ListConfig))


def to_plain(value: Any) -> Any:
    """``value`` with every OmegaConf container in it (at any depth) replaced by a dict / list.

    Interpolations are resolved. Plain dicts, lists and tuples are rebuilt only when they hold an
    OmegaConf container; any other value is returned as it is.
    """
    if _omegaconf_container(value):
        return sys.modules["omegaconf"].OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        items = {k: to_plain(v) for k, v in value.items()}
        return items if any(items[k] is not value[k] for k in value) else value
    if isinstance(value, (list, tuple)):
        items = [to_plain(v) for v in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        return items if isinstance(value, list) else tuple(items)
    return value
