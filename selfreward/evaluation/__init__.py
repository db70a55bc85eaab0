"""Evaluation: the instruments that measure a run's models, each one module under `instruments/`.

- `instrument`: what an instrument is (`Instrument`, `Difference`), and the model steps it compares;
- `estimates`: the one interval type (`Estimate`), bootstrap intervals, paired differences and MDEs;
- `health`: whether a judge can see anything (pairwise position bias, constant or unreadable scores);
- `agreement`: reward-modeling metrics against human ranks; `responses`: every model's evaluation answers;
- `findings`: the paper's claims against the instruments' paired differences.
This package may import `method`, `generation` and the foundation, never `run`.

The registry: every module in `selfreward/evaluation/instruments/` is imported, and with it every
instrument it `register`s; so is every module named in the environment variable SELFREWARD_INSTRUMENTS
(comma-separated; a plugin outside the package). The plan, the results chapter and `compare` use them all.
"""
from __future__ import annotations

import importlib
import pkgutil

from selfreward.evaluation.instrument import Difference, Instrument
from selfreward.plugins import import_plugins

_REGISTERED: dict[str, Instrument] = {}


def register(cls: type[Instrument]) -> type[Instrument]:
    """A class decorator: one instance of `cls` joins the instruments."""
    instance = cls()
    if not instance.name or not instance.title:
        raise ValueError(f"instrument {cls.__name__} needs a name and a title")
    _REGISTERED[instance.name] = instance
    return cls


def _discover():
    package = importlib.import_module("selfreward.evaluation.instruments")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    import_plugins("SELFREWARD_INSTRUMENTS")


def registered(cfg=None) -> list[Instrument]:
    """The registered instruments in their order; those `cfg` enables, when given."""
    _discover()
    found = sorted(_REGISTERED.values(), key=lambda i: (i.order, i.name))
    return [i for i in found if cfg is None or i.enabled(cfg)]


def get(name: str) -> Instrument:
    _discover()
    return _REGISTERED[name]


__all__ = ["Difference", "Instrument", "get", "register", "registered"]
