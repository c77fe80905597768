"""Reimaging: the provider interface and registry (:mod:`.base`), the built-in providers
(:mod:`.redfish`, :mod:`.command`, registered on import of this package) and the audit-history
queries over irkit's own reimages (:mod:`.history`).

Layer: below ``actions/`` (which drive providers as the ``host.reimage`` step), above
``transports/``, ``inventory/`` and ``audit/``; it imports no action, engine, CLI or lab code.
"""

from __future__ import annotations

from ir_toolkit.reimage import command as _command  # noqa: F401  (registers "command")
from ir_toolkit.reimage import redfish as _redfish  # noqa: F401  (registers "redfish")
from ir_toolkit.reimage.base import (
    ProviderFactory,
    ReadyCheck,
    ReimageOptions,
    ReimageProvider,
    ReimageResult,
    ReimageStatus,
    ReimageStep,
    get_provider,
    provider_for,
    provider_names,
    register_provider,
    run_to_completion,
)
from ir_toolkit.reimage.command import CommandProvider
from ir_toolkit.reimage.redfish import RedfishProvider

__all__ = ["CommandProvider", "ProviderFactory", "ReadyCheck", "RedfishProvider", "ReimageOptions",
           "ReimageProvider", "ReimageResult", "ReimageStatus", "ReimageStep", "get_provider", "provider_for",
           "provider_names", "register_provider", "run_to_completion"]
