"""The lab: an inventory materialised as real OpenSSH hosts on this machine.

One host = a network namespace (veth into a per-lab bridge that the controller
reaches), its own mount/UTS/IPC/PID namespaces, an overlay root over a clean
image with read-only ``/usr``, and the distribution's real ``sshd``. Hosts are
seeded with an MSP compromise (docs/lab.md lists every trace).

Modules: :mod:`layout` (paths and names), :mod:`plan` (inventory -> lab plan),
:mod:`state` (intent-first state file), :mod:`netns` (bridge, veth, netns),
:mod:`image` (clean image layer), :mod:`seed` (breach and host layers),
:mod:`host` (init, spawn, exec), :mod:`fleet` (:class:`Lab`: up/down/...),
:mod:`generate` (scale inventories).
"""

from ir_toolkit.lab.fleet import Lab, require_root

__all__ = ["Lab", "require_root"]
