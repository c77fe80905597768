"""Ansible callback shipped with irkit's content (loaded without being enabled, from the directory next
to the playbook): when a play starts (playbook, inventory and every module Ansible needs are loaded, no
worker forked yet), prepare ansible-playbook's process for the workers it forks, once per play. Each task
forks one worker per host from that process, so whatever a worker has to load that the parent has not
is loaded again in every worker, for every host and task (docs/performance.md):

* **warm**: load in the parent what every worker would load for itself - the Jinja filter and test
  plugins a task's templates resolve (``int``, ``join``, ``match``...: Ansible reads all of its filter
  plugin files for the first lookup), the ``normal`` action plugin and ``module_common`` (the module
  builder). Measured (acct, 20 lab hosts, the shipped task in check mode, old/new alternating): each
  forked worker 74.5 -> 49.0, 66.0 -> 54.5 ms (forks 5), 46.0 -> 40.5, 62.5 -> 49.5 ms (forks 50); the
  warm-up itself costs the parent ~20 ms once per play. Only what Ansible itself would load is loaded;
  a name this version does not have is skipped (nothing fails because of the warm-up).
* **freeze**: move the parent's objects out of the cyclic garbage collector's reach (``gc.freeze()``).
  Without it a collection in a worker walks, and so copies on write, the parent's whole heap, and the
  parent's own collections keep walking it: ~5-10 ms of controller CPU per host and run. Only what
  exists at play start is frozen: garbage the play creates later is collected as usual."""

from __future__ import annotations

import gc
import importlib

from ansible.plugins.callback import CallbackBase

#: modules every forked worker imports to run a module task (already in sys.modules: not imported again)
_WORKER_MODULES = ("ansible.plugins.action.normal",
                   "ansible.executor.module_common")


def warm() -> None:
    """Load, in ansible-playbook's main process, what each forked worker would otherwise load itself."""
    for name in _WORKER_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - another Ansible version: that worker loads it as before
            pass
    try:
        from ansible.plugins.loader import action_loader, filter_loader, test_loader
    except Exception:  # noqa: BLE001
        return
    for loader, name in ((filter_loader, "int"), (filter_loader, "join"), (test_loader, "match"),
                         (action_loader, "normal")):
        try:
            loader.get(name, class_only=True) if loader is action_loader else loader.get(name)
        except Exception:  # noqa: BLE001 - e.g. a Jinja builtin that is not an Ansible plugin
            pass


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "irkit_gc_freeze"
    CALLBACK_NEEDS_ENABLED = False

    def v2_playbook_on_play_start(self, play):
        warm()
        gc.collect()
        gc.freeze()
