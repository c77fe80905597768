#!/usr/bin/python
# Shipped with irkit's Ansible content (playbooks/ansible/library/, found next to the playbook).
"""Ansible module: write one sshd drop-in, validate it with the daemon's own ``sshd -t``, reload the
daemon by SIGHUP, and roll the file back if sshd rejects it - in one module execution on the host.

The same steps as ``copy`` + ``shell: sshd -t && kill -HUP`` + a ``rescue`` that removes the file,
without their round trips (``copy`` alone is a remote stat, a temporary directory, a file transfer,
the copy module and a clean-up: five ssh executions per changed host; this is one). See
docs/ansible.md.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: irkit_sshd_dropin
short_description: sshd drop-in written atomically, validated by sshd -t, daemon reloaded, rolled back if rejected
description:
  - Compares the drop-in with the wanted content and mode; unchanged is no change (idempotent).
  - Changed, it writes a temporary file in the drop-in directory and renames it over the drop-in, runs the
    running daemon's own C(sshd -t) command, and only if that accepts the whole configuration sends SIGHUP to
    the daemon's pid (which must still be an sshd). If C(sshd -t) fails or the reload cannot be sent, the
    previous file is put back (or the new one removed), the daemon is not told, and the task fails.
  - Supports check mode (nothing on the host changes; reports whether it would) and diff mode.
options:
  dropin_dir: {description: the daemon's sshd_config.d ("" when its main file does not Include it: fails), type: str, required: true}
  name: {description: file name inside dropin_dir (no slash; must end in .conf), type: str, required: true}
  content: {description: the drop-in's whole content, type: str, required: true}
  mode: {description: file mode (octal string), type: str, default: "0644"}
  validate: {description: the daemon's own test command (sshd -t with its options; shell-quoted, run without a shell), type: str, required: true}
  reload_pid: {description: pid of the listening sshd to SIGHUP, type: int, required: true}
  config: {description: the daemon's main config file (for messages), type: str, default: ""}
"""

import os
import shlex
import signal
import stat
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule


def _read(path):
    """(content bytes, mode) of a regular file at ``path``; (None, None) when absent."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None, None
    if stat.S_ISLNK(st.st_mode):
        return b"", None  # a symlink is never the wanted file: replaced (the rename replaces the link)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(f"{path} exists and is not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        return f.read(1024 * 1024 + 1), stat.S_IMODE(st.st_mode)


def _write_atomic(directory, path, data, mode):
    fd, tmp = tempfile.mkstemp(prefix=".irkit-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _tail(text, limit=300):
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return (lines[-1] if lines else "")[:limit]


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dropin_dir=dict(type="str", required=True),
            name=dict(type="str", required=True),
            content=dict(type="str", required=True),
            mode=dict(type="str", default="0644"),
            validate=dict(type="str", required=True),
            reload_pid=dict(type="int", required=True),
            config=dict(type="str", default=""),
        ),
        supports_check_mode=True,
    )
    p = module.params
    directory = p["dropin_dir"]
    if not directory:
        module.fail_json(msg=f"{p['config'] or 'sshd_config'} has no Include of sshd_config.d; not editing the main file")
    name = p["name"]
    if "/" in name or name.startswith(".") or not name.endswith(".conf"):
        module.fail_json(msg=f"drop-in name {name!r}: one file name ending in .conf")
    if not os.path.isabs(directory):
        module.fail_json(msg=f"drop-in directory {directory!r} is not absolute")
    try:
        mode = int(p["mode"], 8)
    except ValueError:
        module.fail_json(msg=f"mode {p['mode']!r} is not octal")
    path = os.path.join(directory, name)
    new = p["content"].encode("utf-8")
    try:
        old, old_mode = _read(path)
    except OSError as exc:
        module.fail_json(msg=f"cannot read {path}: {exc}")
    if old is not None and len(old) > 1024 * 1024:
        module.fail_json(msg=f"{path} is larger than 1 MiB: not touching it")
    changed = old != new or old_mode != mode
    result = dict(changed=changed, path=path)
    if changed and module._diff:
        result["diff"] = dict(before=(old or b"").decode("utf-8", "replace"), after=p["content"],
                              before_header=path, after_header=path)
    if not changed:
        module.exit_json(msg=f"{path} already in place", **result)
    if module.check_mode:
        module.exit_json(msg=f"would write {path}, validate it with sshd -t and reload sshd", **result)

    made_dir = False
    if not os.path.isdir(directory):
        try:
            os.mkdir(directory, 0o755)
            os.chmod(directory, 0o755)
            made_dir = True
        except OSError as exc:
            module.fail_json(msg=f"cannot create {directory}: {exc}", **result)

    def rollback():
        """The previous file back (or the new one gone); '' or what went wrong."""
        try:
            if old is None or old_mode is None:
                os.unlink(path)
                if made_dir:
                    os.rmdir(directory)
                return ""
            _write_atomic(directory, path, old, old_mode)
            return ""
        except OSError as exc:
            return f"; rolling back failed too: {exc}"

    try:
        _write_atomic(directory, path, new, mode)
    except OSError as exc:
        module.fail_json(msg=f"cannot write {path}: {exc}{rollback()}", **result)
    undone = "drop-in removed" if old is None or old_mode is None else "previous drop-in restored"
    rc, out, err = module.run_command(shlex.split(p["validate"]))
    if rc != 0:
        failed = rollback()
        module.fail_json(msg=f"sshd rejected the hardening settings ({_tail(err) or _tail(out) or 'exit ' + str(rc)}); "
                             f"{undone}, sshd not reloaded{failed}", rc=rc, rolled_back=not failed, **result)
    pid = p["reload_pid"]
    try:
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        comm = ""
    if pid <= 1 or not comm.startswith("sshd"):
        failed = rollback()
        module.fail_json(msg=f"pid {pid} is not the sshd irkit found ({comm or 'gone'}); {undone}, "
                             f"sshd not reloaded{failed}", rolled_back=not failed, **result)
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        failed = rollback()
        module.fail_json(msg=f"cannot reload sshd (pid {pid}): {exc}; {undone}{failed}", rolled_back=not failed,
                         **result)
    # the daemon re-executes itself under the same pid: wait (at most ~2.5 s, as irkit's own reload
    # does) until it listens again, so the next login does not meet the gap
    for _ in range(50):
        time.sleep(0.05)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"listener" in f.read(4096):
                    break
        except OSError:
            pass
    module.exit_json(msg=f"{path} written, validated by sshd -t, sshd (pid {pid}) reloaded", **result)


if __name__ == "__main__":
    main()
