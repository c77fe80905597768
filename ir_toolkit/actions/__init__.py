"""Actions: plan / apply / verify units of change, registered by name."""

from __future__ import annotations

import importlib

BUILTIN_MODULES = ("ir_toolkit.actions.basic", "ir_toolkit.actions.responder", "ir_toolkit.actions.accounts",
                   "ir_toolkit.actions.revocation", "ir_toolkit.actions.isolation",
                   "ir_toolkit.actions.triage", "ir_toolkit.actions.reimage", "ir_toolkit.actions.provision",
                   "ir_toolkit.actions.verify_clean", "ir_toolkit.actions.ansible",
                   "ir_toolkit.actions.directory", "ir_toolkit.actions.windows")
_loaded = False


def load_builtin_actions() -> None:
    """Import the modules that register irkit's own actions (once)."""
    global _loaded
    if _loaded:
        return
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    _loaded = True
