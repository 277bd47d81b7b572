"""Every detector family, found by importing the modules of this package.

A family registers its config with `base.register`; importing the package's modules
is all it takes to make a family known, so there is no list to forget to update.
"""

from __future__ import annotations

import importlib
import pkgutil

from driftline.detectors import base
from driftline.detectors.base import DetectorConfig

_INFRASTRUCTURE = {
    "base",
    "summaries",
    "results",
    "runner",
    "registry",
    "stats",
    "methods",
    "scheduler",
    "monitors",
}


def load_all() -> None:
    """Import every family module (imports are cached, so this is cheap after the first call)."""
    import driftline.detectors as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in _INFRASTRUCTURE and not module.name.startswith("_"):
            importlib.import_module(f"driftline.detectors.{module.name}")


def default_configs() -> list[DetectorConfig]:
    """What a model is monitored with when nobody configured anything: every family, default settings."""
    load_all()
    return [cls() for kind, cls in sorted(base.kinds().items()) if getattr(cls, "default", True)]


def kinds() -> dict[str, type[DetectorConfig]]:
    load_all()
    return base.kinds()
