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


def _addresses(items: list[str]) -> str | None:
    """nft set elements for a rule's RemoteAddress (None means Any)."""
    out = []
    for item in items:
        if item.lower() == "any":
            return None
        out.append(item)
    return "{ " + ", ".join(out) + " }" if out else None


def ruleset(rules: list[dict[str, Any]]) -> str:
    """The nft script for the model's enabled rules (replaces the table atomically)."""
    lines = [f"table inet {TABLE}", f"delete table inet {TABLE}", f"table inet {TABLE} {{",
             "  chain input {", "    type filter hook input priority 0; policy drop;",
             '    iifname "lo" accept']
    enabled = [r for r in rules if r.get("enabled")]
    for r in enabled:
        if r["direction"] == "Inbound" and r["action"] == "Block":
            addrs = _addresses(r["remote_address"])
            lines.append(f"    ip saddr {addrs} drop" if addrs else "    drop")
    lines.append("    ct state established,related accept")
    for r in enabled:
        if r["direction"] == "Inbound" and r["action"] == "Allow":
            addrs = _addresses(r["remote_address"])
            match = f"ip saddr {addrs} " if addrs else ""
            port = r.get("local_port", "Any")
            proto = r.get("protocol", "Any").lower()
            if proto in ("tcp", "udp") and port != "Any":
                match += f"{proto} dport {int(port)} "
            lines.append(f"    {match}accept")
    lines += ["  }", "  chain output {", "    type filter hook output priority 0; policy accept;",
              '    oifname "lo" accept']
    for r in enabled:
        if r["direction"] == "Outbound" and r["action"] == "Block":
            addrs = _addresses(r["remote_address"])
            lines.append(f"    ip daddr {addrs} drop" if addrs else "    drop")
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
