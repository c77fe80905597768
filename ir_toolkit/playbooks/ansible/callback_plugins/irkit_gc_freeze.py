"""Ansible callback shipped with irkit's content (loaded without being enabled, from the directory next
to the playbook): when a play starts (playbook, inventory and every module Ansible needs are loaded, no
worker forked yet), move ansible-playbook's objects out of the cyclic garbage collector's reach
(``gc.freeze()``, once per play). Each task forks one worker per host from that process; without it a
collection in a worker walks, and so copies on write, the parent's whole heap, and the parent's own
collections keep walking it. Measured: ~5-10 ms of controller CPU per host and run
(docs/performance.md). Only what exists at play start is frozen: garbage the play creates later is
collected as usual."""

from __future__ import annotations

import gc

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "irkit_gc_freeze"
    CALLBACK_NEEDS_ENABLED = False

    def v2_playbook_on_play_start(self, play):
        gc.collect()
        gc.freeze()
