"""Read-only host facts: each a command plus a pure parser (:mod:`ir_toolkit.facts.base`).

Modules: :mod:`.accounts` (passwd, shadow status, processes), :mod:`.files` (whole files),
:mod:`.sshd` (daemon, ``sshd -T``, authorized_keys), :mod:`.nft` (the isolation table),
:mod:`.flows` (addresses, sockets, conntrack), :mod:`.windows` (local users and groups over WinRM).
Fixture-tested from recorded output in ``tests/fixtures/facts/`` (no host needed).
"""
