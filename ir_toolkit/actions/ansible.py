"""``ansible.playbook``: run Ansible content as an irkit step, with irkit's guarantees around it.

The step targets exactly the hosts irkit's step targets; each host's engine worker arrives
here, and the arrivals of one step are gathered into **one** ansible-runner job (a batch:
hosts that arrive within a short quiet period, at most ``hosts_per_job`` of them), as Ansible would
run them with ``--forks``. Per host the step then fails exactly when Ansible says the host
failed or was unreachable, so irkit's wave and tenant ``max_fail_percentage``, the run
summary, retries and resume treat Ansible hosts like any other.

What irkit adds around the content:

* the inventory is generated from irkit's, with each host's SSH host key pinned to the key
  irkit itself verified on its own connection (a known_hosts file of exactly those keys,
  ``StrictHostKeyChecking=yes``); facts irkit found are passed as host variables
  (``irkit_sshd_pid``, ``irkit_sshd_exe``, ``irkit_sshd_config``, ``irkit_allow_users``…);
* the runner job goes through ansible-runner's streaming worker in a child process with an
  allow-listed environment (:mod:`ir_toolkit.transports.ansible_runner`): no secret on disk
  in the case directory, the SSH key only in ssh-agent, extra vars that hold secrets
  (``secret_vars``, references resolved at run time) registered for redaction;
* every per-host task result becomes an ``ansible.task`` audit record (task, module, status,
  changed, duration; a ``no_log`` task's result never), and each host's totals an
  ``ansible.stats`` record;
* planning runs the content with ``--check --diff`` and shows per host what would change;
  ``verify`` runs it again in check mode and requires that nothing would change.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from ir_toolkit.actions.base import Action, ActionContext, ActionFailed, Outcome, Params, register, DESTROYS_CREDENTIALS
from ir_toolkit.transports.ansible_runner import AnsibleEvent, AnsibleJob, AnsibleResult, AnsibleRunError, run_job

#: where shipped Ansible content lives (``playbook:`` paths are relative to it unless absolute)
CONTENT_DIR = Path(__file__).resolve().parents[1] / "playbooks" / "ansible"
_REPO_CONTENT_DIR = Path(__file__).resolve().parents[2] / "playbooks" / "ansible"


def content_dir() -> Path:
    return CONTENT_DIR if CONTENT_DIR.is_dir() else _REPO_CONTENT_DIR


class AnsibleParams(Params):
    #: playbook file, relative to irkit's ``playbooks/ansible/`` (or an absolute path)
    playbook: str
    #: extra variables (plain values; never secrets)
    extra_vars: dict[str, Any] = {}
    #: extra variables whose values are secret references (``env:NAME``, ``file:PATH``)
    secret_vars: dict[str, str] = {}
    forks: int = Field(default=50, ge=1, le=500)
    #: most hosts in one ansible-runner job (each job starts ansible-playbook again: ~2-3 s of CPU)
    hosts_per_job: int = Field(default=500, ge=1, le=5000)
    #: seconds without any output before the job is killed
    idle_timeout: int = Field(default=120, ge=5, le=86400)
    #: ``check``: verify runs the content again in check mode and requires "no change"
    verify: Literal["check", "none"] = "check"
    #: pass irkit's sshd facts (daemon pid, binary, config file, RevokedKeys) as host variables
    sshd_facts: bool = False
    #: the run must change nothing (a re-check, e.g. in the containment playbook's verify phase)
    expect_no_change: bool = False

    @field_validator("playbook")
    @classmethod
    def _relative(cls, value: str) -> str:
        if not value or "\0" in value:
            raise ValueError("playbook must be a file name")
        if not value.startswith("/") and ".." in Path(value).parts:
            raise ValueError("playbook must not leave playbooks/ansible/ (no '..')")
        return value


def resolve_playbook(params: AnsibleParams) -> tuple[Path, str]:
    """(project directory, playbook path relative to it)."""
    path = Path(params.playbook)
    if path.is_absolute():
        project, rel = path.parent, path.name
    else:
        project, rel = content_dir(), params.playbook
    if not (project / rel).is_file():
        raise ActionFailed(f"Ansible playbook {params.playbook} not found in {project}")
    return project, rel


# --------------------------------------------------------------------------- batching


@dataclass
class _Member:
    ctx: ActionContext
    hostvars: dict[str, Any]
    known_hosts: list[str]


@dataclass
class _Batch:
    key: tuple[Any, ...]
    members: list[_Member] = field(default_factory=list)
    closed: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    last_arrival: float = field(default_factory=time.monotonic)
    result: AnsibleResult | None = None
    error: Exception | None = None


class _Batcher:
    """Gathers the hosts of one step into one Ansible job (first arrival leads)."""

    quiet = 0.4       # seconds without a new arrival before the job starts
    max_wait = 3.0    # longest a leader waits for others

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[Any, ...], _Batch] = {}

    def submit(self, key: tuple[Any, ...], member: _Member, limit: int,
               run: Any) -> tuple[AnsibleResult, list[_Member]]:
        with self._lock:
            batch = self._open.get(key)
            leader = batch is None
            if batch is None:
                batch = self._open[key] = _Batch(key)
            batch.members.append(member)
            batch.last_arrival = time.monotonic()
            if len(batch.members) >= limit:
                batch.closed = True
                self._open.pop(key, None)
        if leader:
            start = time.monotonic()
            while True:
                with self._lock:
                    if batch.closed:
                        break
                    now = time.monotonic()
                    if now - batch.last_arrival >= self.quiet or now - start >= self.max_wait:
                        batch.closed = True
                        self._open.pop(key, None)
                        break
                time.sleep(0.05)
            try:
                batch.result = run(batch.members)
            except Exception as exc:  # noqa: BLE001 - handed to every member
                batch.error = exc
            finally:
                batch.done.set()
        else:
            remaining = max(1.0, member.ctx.remaining())
            if not batch.done.wait(remaining + 30):
                raise ActionFailed("the Ansible job of this step did not finish in time")
        if batch.error is not None:
            raise batch.error
        assert batch.result is not None
        return batch.result, batch.members


_BATCHER = _Batcher()


# --------------------------------------------------------------------------- helpers


def _host_key_line(ctx: ActionContext) -> list[str]:
    """known_hosts line(s) for the key irkit verified on its own pinned connection."""
    client = getattr(ctx.conn, "client", None)
    transport = client.get_transport() if client is not None else None
    if transport is None:
        raise ActionFailed("no verified SSH host key for this host (irkit's connection is not open)")
    key = transport.get_remote_server_key()
    host = ctx.host.address if int(ctx.host.port or 22) == 22 else f"[{ctx.host.address}]:{int(ctx.host.port or 22)}"
    return [f"{host} {key.get_name()} {key.get_base64()}"]


def _pkey_text(ctx: ActionContext) -> str:
    """The responder's private key (OpenSSH format) for ssh-agent: the MSP's responder key (the
    inventory's; the per-case key is bound by from= to irkit's own connections and stays with irkit)."""
    keys = list(ctx.require_pool().keys(ctx.host))
    if not keys:
        raise ActionFailed("no responder key to give Ansible")
    return openssh_private_text(keys[-1])


def openssh_private_text(pkey: Any) -> str:
    import io

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    signing = getattr(pkey, "_signing_key", None)
    if signing is not None:  # paramiko's Ed25519Key (PyNaCl signing key: the 32-byte seed first)
        seed = bytes(signing)[:32]
        key = Ed25519PrivateKey.from_private_bytes(seed)
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                 serialization.NoEncryption()).decode()
    buf = io.StringIO()
    pkey.write_private_key(buf)
    return buf.getvalue()


_PLAIN_PATH = re.compile(r"/[A-Za-z0-9._/+-]{1,200}")


def _sshd_facts(ctx: ActionContext) -> dict[str, Any]:
    from ir_toolkit.actions import sshd

    daemon = sshd.locate(ctx)
    user = ctx.host.user or ctx.inventory.msp.responder.user
    addr = sshd.client_address(ctx)
    eff = sshd.effective_config(ctx, daemon, user, addr)
    revoked = (eff.get("revokedkeys") or ["none"])[0]
    # Does the daemon's main file Include its sshd_config.d, and does that directory exist? (one
    # command on irkit's own connection instead of two Ansible tasks per host; only exit codes come back)
    conf = ctx.quote(daemon.config_file)
    dropin = posixpath.join(posixpath.dirname(daemon.config_file), "sshd_config.d")
    # ... and which python3 Ansible's modules would run on (Ansible's interpreter discovery is one more
    # ssh execution per host and run; a path that is not plain is left to that discovery)
    probe = ctx.run(f"grep -Eiq '^[[:space:]]*Include[[:space:]]+.*sshd_config\\.d' {conf}; echo $?; "
                    f"test -d {ctx.quote(dropin)} && echo dir; command -v python3")
    lines = probe.text.split()
    if not lines or lines[0] not in ("0", "1"):
        raise ActionFailed(f"cannot read {daemon.config_file} to look for its Include of sshd_config.d")
    python = next((w for w in lines[1:] if w != "dir"), "")
    facts: dict[str, Any] = {}
    if _PLAIN_PATH.fullmatch(python):
        facts["ansible_python_interpreter"] = python
    return {**facts,
        "irkit_sshd_dropin_dir": dropin if lines[0] == "0" else "",
        "irkit_sshd_dropin_exists": "dir" in lines[1:],
        "irkit_sshd_pid": daemon.pid,
        "irkit_sshd_exe": daemon.exe,
        "irkit_sshd_config": daemon.config_file,
        "irkit_sshd_test_command": daemon.command("-t"),
        "irkit_sshd_revoked_keys": revoked,
    }


def _allow_users(ctx: ActionContext) -> list[str]:
    users = [ctx.host.user or ctx.inventory.msp.responder.user]
    for account in ctx.inventory.msp.shared_credentials.accounts:
        if account.action == "rotate" and (account.os in (None, ctx.host.os)) and account.user not in users:
            users.append(account.user)
    return users


def _resolve_secrets(params: AnsibleParams) -> dict[str, str]:
    from ir_toolkit.redaction import register_secret
    from ir_toolkit.secrets.references import parse_ref, resolve

    out: dict[str, str] = {}
    for name, ref in params.secret_vars.items():
        try:
            value = resolve(parse_ref(ref))
        except Exception as exc:  # noqa: BLE001 - one clear line
            raise ActionFailed(f"secret_vars.{name}: cannot resolve {ref}: {exc}") from exc
        register_secret(value)
        out[name] = value
    return out


# --------------------------------------------------------------------------- the action


@register
class AnsiblePlaybook(Action):
    """Run an Ansible playbook (through ansible-runner) on the step's hosts."""

    name = "ansible.playbook"
    Params = AnsibleParams
    description = "run Ansible content through ansible-runner; events into the signed audit log"
    destructive = True
    destroys = DESTROYS_CREDENTIALS
    os = ("linux",)
    connection_kinds = ("ssh",)
    #: a retry re-runs idempotent content; a half-run job is finished by the next run
    retry_safe = True
    #: only apply reads it: the check-mode prediction of an otherwise equal step is the same
    plan_ignores = ("expect_no_change",)

    def _run(self, ctx: ActionContext, params: AnsibleParams, mode: str) -> tuple[AnsibleResult, str]:
        project, rel = resolve_playbook(params)
        hostvars: dict[str, Any] = {"irkit_allow_users": _allow_users(ctx), "irkit_case": ctx.case_id}
        if params.sshd_facts:
            hostvars.update(_sshd_facts(ctx))
        member = _Member(ctx, hostvars, _host_key_line(ctx))
        digest = hashlib.sha256(json.dumps(params.model_dump(), sort_keys=True, default=str).encode()).hexdigest()
        key = (ctx.case_id, mode, digest)
        check = mode != "apply"
        # the signed record holds every run of the step proper: the apply, and the check-mode re-run
        # of an ``expect_no_change`` step (verify's own check stays out: the apply's records prove it)
        journal = ctx.journal if mode in ("apply", "recheck") and not ctx.planning else None

        def run(members: list[_Member]) -> AnsibleResult:
            from ir_toolkit.inventory.ansible import host_vars

            inv_hosts: dict[str, Any] = {}
            known: list[str] = []
            by_name = {}
            for m in members:
                hv = host_vars(m.ctx.host, m.ctx.inventory)
                hv.update(m.hostvars)
                inv_hosts[m.ctx.host.name] = hv
                known.extend(m.known_hosts)
                by_name[m.ctx.host.name] = m
            inventory = {"all": {"hosts": inv_hosts, "vars": {"ansible_ssh_pipelining": True}}}
            secrets = _resolve_secrets(params)
            deadline = min(m.ctx.remaining() for m in members)
            if deadline <= 1:
                raise ActionFailed("step deadline reached before the Ansible job could start")
            case_dir = _case_ansible_dir(ctx.case_id)
            run_dir = case_dir / f"{mode}-{digest[:12]}-{int(time.time() * 1000)}"

            def on_event(event: AnsibleEvent) -> None:
                if journal is None:
                    return
                m = by_name.get(event.host)
                if m is None:
                    return  # an event for a host that is not in this job: ignored
                journal.append_durable(action="ansible.task", actor=ctx.actor, tenant=m.ctx.host.tenant,
                               host=m.ctx.host.name, outcome=event.status, params={
                                   "case": ctx.case_id, "playbook": params.playbook, "task": event.task,
                                   "module": event.module, "changed": event.changed,
                                   "duration_ms": int(event.duration * 1000) if event.duration is not None else None,
                                   "message": event.message, "no_log": event.no_log,
                                   "ignore_errors": event.ignore_errors})

            # --diff only where a diff is shown (the plan): the apply and the re-checks record no diff, and
            # with --diff Ansible renders every changed host's diff in its main process
            job = AnsibleJob(project=project, playbook=rel, inventory=inventory,
                             limit=tuple(inv_hosts), forks=params.forks, check=check, diff=mode == "plan",
                             extravars={**params.extra_vars, **secrets}, ssh_key=_pkey_text(ctx),
                             job_timeout=deadline, idle_timeout=float(params.idle_timeout),
                             secrets=tuple(secrets.values()), known_hosts="\n".join(known) + "\n")
            try:
                result = run_job(job, run_dir, on_event=on_event)
            except AnsibleRunError as exc:
                raise ActionFailed(f"Ansible: {exc}") from exc
            finally:
                _cleanup(run_dir)
            if journal is not None:
                for name, m in by_name.items():
                    st = result.host_stats(name)
                    journal.append_durable(action="ansible.stats", actor=ctx.actor, tenant=m.ctx.host.tenant,
                                   host=name, outcome="ok" if st.success and result.seen_stats else "failed",
                                   params={"case": ctx.case_id, "playbook": params.playbook,
                                           "status": result.status, "ok": st.ok, "changed": st.changed,
                                           "failed": st.failed, "unreachable": st.unreachable,
                                           "skipped": st.skipped, "hosts_in_job": len(by_name)})
            return result

        result, _members = _BATCHER.submit(key, member, max(params.hosts_per_job, 1), run)
        return result, rel

    @staticmethod
    def _judge(ctx: ActionContext, result: AnsibleResult, rel: str) -> tuple[bool, list[AnsibleEvent]]:
        name = ctx.host.name
        if not result.seen_stats:
            raise ActionFailed(f"Ansible {rel}: {result.status}: {result.explanation or 'no result'}")
        st = result.host_stats(name)
        events = result.host_events(name)
        if st.unreachable:
            bad = next((e for e in events if e.status == "unreachable"), None)
            raise ActionFailed(f"Ansible: host unreachable: {bad.message if bad else ''}".rstrip(": "))
        if st.failed:
            bad = next((e for e in events if e.status == "failed" and not e.ignore_errors), None)
            what = f"task {bad.task!r} failed" + (f": {bad.message}" if bad and bad.message else "") if bad \
                else "a task failed"
            raise ActionFailed(f"Ansible {rel}: {what}")
        return st.changed > 0, events

    def plan(self, ctx: ActionContext, params: AnsibleParams) -> Outcome:
        if not ctx.preview:
            # `contain --yes`: nobody reads this plan before it runs, and a check-mode run costs as
            # much controller CPU as the apply itself; `irkit plan` / `--dry-run` show the diff
            _, rel = resolve_playbook(params)
            return Outcome(True, f"{rel}: runs at apply (check-mode preview skipped under --yes; "
                                 "--dry-run shows it)", {"playbook": rel, "preview": False})
        result, rel = self._run(ctx, params, "plan")
        changed, events = self._judge(ctx, result, rel)
        would = [e for e in events if e.changed]
        diff = "\n".join(e.diff for e in would if e.diff)
        summary = (f"would change {len(would)} task(s): " + ", ".join(e.task for e in would[:5])) if would \
            else f"{rel}: no change (check mode)"
        return Outcome(changed, summary, {"playbook": rel, "would_change": [e.task for e in would],
                                          "diff": diff[:4000]})

    def apply(self, ctx: ActionContext, params: AnsibleParams) -> Outcome:
        # expect_no_change (a re-check, e.g. the containment playbook's verify phase): one run in
        # check mode proves "nothing would change" without changing anything if something drifted
        result, rel = self._run(ctx, params, "recheck" if params.expect_no_change else "apply")
        changed, events = self._judge(ctx, result, rel)
        st = result.host_stats(ctx.host.name)
        if changed and params.expect_no_change:
            tasks = ", ".join(e.task for e in events if e.changed)
            raise ActionFailed(f"Ansible {rel}: expected no change, but a check-mode run would change: {tasks}")
        return Outcome(changed, f"{rel}: {st.ok} ok, {st.changed} changed, {st.skipped} skipped",
                       {"playbook": rel, "changed_tasks": [e.task for e in events if e.changed][:50]},
                       verified=params.verify == "none")

    def verify(self, ctx: ActionContext, params: AnsibleParams) -> Outcome:
        result, rel = self._run(ctx, params, "verify")
        changed, events = self._judge(ctx, result, rel)
        if changed:
            tasks = ", ".join(e.task for e in events if e.changed)
            return Outcome(False, f"{rel}: a check-mode run would still change: {tasks}", ok=False)
        return Outcome(False, f"{rel}: check-mode run reports no change")


def _case_ansible_dir(case_id: str) -> Path:
    from ir_toolkit.home import case_dir

    path = case_dir(case_id) / "ansible"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def _cleanup(run_dir: Path) -> None:
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
