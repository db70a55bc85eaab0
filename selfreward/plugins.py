"""Plugins: modules outside the package that register instruments, small-model fixes or generation engines,
named in an environment variable (SELFREWARD_INSTRUMENTS, SELFREWARD_FIXES, SELFREWARD_ENGINES;
comma-separated). A plugin that is missing or fails on import is a one-line ConfigError naming it.

This module is foundation: it imports only `config`.
"""
from __future__ import annotations

import importlib
import os

from selfreward.config import ConfigError


def import_plugins(variable: str) -> list[str]:
    """Import every module the environment variable names; returns their names."""
    names = [m.strip() for m in os.environ.get(variable, "").split(",") if m.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as err:  # whatever the plugin raises: which module, and why, in one line
            last = (str(err).strip().splitlines() or [""])[-1]
            raise ConfigError(f"{variable}: plugin module {name!r} cannot be imported "
                              f"({type(err).__name__}{': ' + last if last else ''})") from None
    return names
