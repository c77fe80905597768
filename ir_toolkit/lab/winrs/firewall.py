"""Windows Defender Firewall rules of the model, enforced as real nftables rules in the host's netns.

Semantics kept from Windows: block rules win over allow rules; inbound traffic not allowed by
a rule is dropped (the default inbound action of every profile is Block); outbound is allowed
unless a block rule matches; loopback is never filtered. The endpoint runs in the host's own
network namespace, so ``nft`` changes only that host, and isolation is proven by packets.
What this cannot model: profiles (Domain/Private/Public: the lab uses one), WFP's per-
application filters, and the fact that on Windows an established flow may survive a new
block rule (here every packet is filtered, which is stricter).
"""

from __future__ import annotations

import shutil
from typing import Any

from ir_toolkit import childenv

TABLE = "irkit_winfw"


def _split(items: list[str]) -> tuple[list[str], list[str]] | None:
    """A rule's RemoteAddress as (IPv4, IPv6) nft set elements; None means Any."""
    v4, v6 = [], []
    for item in items:
        if item.lower() == "any":
            return None
        (v6 if ":" in item else v4).append(item)
    return v4, v6


def _match_lines(rule: dict[str, Any], direction: str, verdict: str, extra: str = "") -> list[str]:
    split = _split(rule["remote_address"])
    if split is None:
        return [f"    {extra}{verdict}"]
    lines = []
    for family, items in (("ip", split[0]), ("ip6", split[1])):
        if items:
            lines.append(f"    {family} {direction} {{ {', '.join(items)} }} {extra}{verdict}")
    return lines


def ruleset(rules: list[dict[str, Any]]) -> str:
    """The nft script for the model's enabled rules (replaces the table atomically)."""
    lines = [f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{",
             "  chain input {", "    type filter hook input priority 0; policy drop;",
             '    iifname "lo" accept']
    enabled = [r for r in rules if r.get("enabled")]
    for r in enabled:
        if r["direction"] == "Inbound" and r["action"] == "Block":
            lines += _match_lines(r, "saddr", "drop")
    lines.append("    ct state established,related accept")
    for r in enabled:
        if r["direction"] == "Inbound" and r["action"] == "Allow":
            port = r.get("local_port", "Any")
            proto = r.get("protocol", "Any").lower()
            extra = f"{proto} dport {int(port)} " if proto in ("tcp", "udp") and port != "Any" else ""
            lines += _match_lines(r, "saddr", "accept", extra)
    lines += ["  }", "  chain output {", "    type filter hook output priority 0; policy accept;",
              '    oifname "lo" accept']
    for r in enabled:
        if r["direction"] == "Outbound" and r["action"] == "Block":
            lines += _match_lines(r, "daddr", "drop")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def apply(rules: list[dict[str, Any]]) -> None:
    """Load the ruleset into the current network namespace (raises on an nft error)."""
    nft = shutil.which("nft", path="/usr/sbin:/sbin:/usr/bin:/bin")
    if nft is None:
        raise RuntimeError("nft (nftables) is not installed")
    proc = childenv.run([nft, "-f", "-"], input=ruleset(rules), capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"nft failed: {' '.join(proc.stderr.split())[:300]}")
