"""Facts as data: recorded host output in -> parsed facts out; facts + params in -> decision/commands out.

Every case is a JSON fixture under ``tests/fixtures/facts/`` (``parsers/`` and ``decisions/``); no
host, no root, no network: runs as ``nobody``. Hostile cases (a lying, oversized or escaping host)
expect ``error``: the parser must fail closed with a :class:`~ir_toolkit.facts.base.FactError`
whose message holds that text.

A parser case: ``{"name", "args"?, "exit_status"?, "stdout" | "stdout_parts", "stderr"?,
"expect" | "error", "command"?}``; ``stdout_parts`` is a list of ``[text, times]`` (huge inputs
without huge files). A decision case: ``{"name", "facts", "params", "expect"}``.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest

from ir_toolkit.actions.accounts import account_decision
from ir_toolkit.actions.isolation import _networks, isolation_decision, isolation_problems, ruleset
from ir_toolkit.actions.responder import access_decision, install_script, keyfile_for
from ir_toolkit.actions.base import ActionFailed
from ir_toolkit.actions.revocation import RevokeTarget, key_file_candidates, revocation_state, sshd_config_with_krl
from ir_toolkit.facts import accounts, files, flows, nft, sshd, traces, windows
from ir_toolkit.facts.base import FactError, Output, to_json

FIXTURES = Path(__file__).parent / "fixtures" / "facts"

DAEMON = sshd.SshdDaemon(812, "/usr/sbin/sshd", "/etc/ssh/sshd_config", [])


def _daemon(args: dict[str, Any]) -> sshd.SshdDaemon:
    d = args.pop("daemon", None)
    return sshd.SshdDaemon(**d) if d else DAEMON


#: fact name -> how to build its query from the fixture's ``args``
QUERIES: dict[str, Any] = {
    "accounts.passwd_entry": lambda a: accounts.passwd_entry(**a),
    "accounts.passwd_all": lambda a: accounts.passwd_all(),
    "accounts.state": lambda a: accounts.account_state(**a),
    "accounts.password_matches": lambda a: accounts.password_matches(**a),
    "accounts.processes": lambda a: accounts.processes(**a),
    "files.read": lambda a: files.read_files(**a),
    "sshd.daemon": lambda a: sshd.daemon(),
    "sshd.client_address": lambda a: sshd.client_address(),
    "sshd.effective_config": lambda a: sshd.effective_config(_daemon(a), **a),
    "sshd.effective_for_users": lambda a: sshd.effective_for_users(_daemon(a), a["users"], a["addr"],
                                                                    tuple(a["keywords"])),
    "sshd.has_match_blocks": lambda a: sshd.has_match_blocks(_daemon(a)),
    "sshd.krl": lambda a: sshd.krl_listing(**a),
    "nft.table": lambda a: nft.table(**a),
    "nft.installed": lambda a: nft.installed(),
    "flows.facts": lambda a: flows.flow_facts(),
    "windows.local_users": lambda a: windows.local_users(),
    "windows.group_members": lambda a: windows.group_members(**a),
    "windows.sessions": lambda a: windows.sessions(),
    "windows.processes": lambda a: windows.processes(),
    "traces.files": lambda a: traces.trace_files(a.get("paths", []), a.get("units", []), a.get("cron_patterns", []),
                                                 a.get("ports", [])),
    "traces.processes": lambda a: traces.trace_processes(a["patterns"]),
}


def _stdout(case: dict[str, Any]) -> bytes:
    if "stdout_parts" in case:
        return "".join(text * times for text, times in case["stdout_parts"]).encode()
    return case.get("stdout", "").encode()


def _parser_cases() -> list[Any]:
    out = []
    for path in sorted((FIXTURES / "parsers").glob("*.json")):
        spec = json.loads(path.read_text())
        for case in spec["cases"]:
            out.append(pytest.param(spec["fact"], case, id=f"{path.stem}:{case['name']}"))
    return out


@pytest.mark.parametrize("fact, case", _parser_cases())
def test_parser_fixture(fact: str, case: dict[str, Any]) -> None:
    query = QUERIES[fact](dict(case.get("args", {})))
    assert query.fact == fact
    if "command" in case:
        assert query.command == case["command"]
    output = Output(case.get("exit_status", 0), _stdout(case), case.get("stderr", "").encode())
    if "error" in case:
        with pytest.raises(FactError) as caught:
            query.parse(output)
        assert case["error"] in str(caught.value)
        assert "\x1b" not in str(caught.value)  # an escape sequence never reaches a terminal through us
    else:
        assert to_json(query.parse(output)) == case["expect"]


# ---------------------------------------------------------------------------- decisions

def _isolate(facts: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    allowed = _networks(params["allowed"])
    script, spec = ruleset(allowed, params["case"])
    listing = facts["nft_table"]
    table = nft.parse_table("inet", "irkit_isolation",
                            Output(listing.get("exit_status", 0), listing.get("stdout", "").encode()))
    return {"spec": spec, "decision": isolation_decision(table, spec), "problems": isolation_problems(table, spec),
            "script": script.splitlines()}


def _ensure_access(facts: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    config = sshd.parse_sshd_t(facts["sshd_t"])
    entry = accounts.passwd_entry(params["user"]).parse(Output(0, facts["passwd"].encode()))
    assert entry is not None
    path = keyfile_for(config, entry.user, entry.home, entry.uid)
    blob = sshd.key_blob(params["key"])
    assert blob is not None
    decision = access_decision(facts.get("keyfile"), blob, params["options"])
    return {"keyfile": path, **to_json(decision),
            "command": None if decision.installed else install_script(path, entry.user)}


def _revoke(facts: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    users = accounts.passwd_all().parse(Output(0, facts["passwd"].encode()))
    candidates = key_file_candidates(users, facts.get("per_user", {}))
    contents = {p: c for p, c in facts.get("files", {}).items() if p in candidates}
    krl = facts["krl"]
    listing = sshd.krl_listing(params["krl_path"]).parse(
        Output(krl.get("exit_status", 0), krl.get("stdout", "").encode()))
    targets = [RevokeTarget(fp, fp) for fp in params["targets"]]
    revoked = facts.get("revokedkeys", "none")
    krl_path = revoked if revoked != "none" else params["krl_path"]
    state = revocation_state(DAEMON, candidates, contents, revoked, krl_path, listing, targets)
    return {"candidates": candidates,
            "hits": [{"path": h.path, "user": h.user, "lines": h.lines} for h in state.hits],
            "in_krl": sorted(state.in_krl), "configured": state.configured, "krl_path": state.krl_path,
            "files_checked": state.files_checked}


def _rotate(facts: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    out = facts["state"]
    state = accounts.account_state(params["user"], today=facts["today"]).parse(
        Output(out.get("exit_status", 0), out.get("stdout", "").encode()))
    decision = account_decision(state, params["mode"])
    return {"action": decision.action, "commands": decision.commands, "locked": state.locked,
            "expired": state.expired}


def _deprivilege(facts: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    members = {g: windows.group_members(g).parse(Output(0, text.encode())) for g, text in facts["groups"].items()}
    return windows.privileged_memberships(members, params["accounts"])


def _cut_flows(facts: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    parsed = flows.parse_facts(facts["output"])
    plan = flows.cut_plan(parsed, [ipaddress.ip_network(n, strict=False) for n in params["allowed"]])
    return {"peers": [str(p) for p in plan.peers], "sockets": len(plan.sockets), "tracked": len(plan.tracked),
            "script": flows.cut_script(plan, parsed).splitlines()}


def _sshd_config(facts: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"config": sshd_config_with_krl(facts["sshd_config"], params["krl_path"], params["case"]).split("\n")}
    except ActionFailed as exc:
        return {"error": str(exc)}


DECISIONS = {
    "ssh_keys.revoke.sshd_config": _sshd_config,
    "host.isolate": _isolate,
    "responder.ensure_access": _ensure_access,
    "ssh_keys.revoke": _revoke,
    "accounts.rotate": _rotate,
    "accounts.deprivilege": _deprivilege,
    "host.isolate.cut_flows": _cut_flows,
}


def _decision_cases() -> list[Any]:
    out = []
    for path in sorted((FIXTURES / "decisions").glob("*.json")):
        spec = json.loads(path.read_text())
        for case in spec["cases"]:
            out.append(pytest.param(spec["decision"], case, id=f"{path.stem}:{case['name']}"))
    return out


@pytest.mark.parametrize("decision, case", _decision_cases())
def test_decision_fixture(decision: str, case: dict[str, Any]) -> None:
    got = DECISIONS[decision](case["facts"], case["params"])
    want = case["expect"]
    assert {k: got[k] for k in want} == want


def test_every_containment_action_has_decision_fixtures() -> None:
    covered = {json.loads(p.read_text())["decision"] for p in (FIXTURES / "decisions").glob("*.json")}
    assert {"responder.ensure_access", "host.isolate", "ssh_keys.revoke", "accounts.rotate",
            "accounts.deprivilege"} <= covered


def test_every_fact_has_fixtures_with_a_hostile_case() -> None:
    seen: dict[str, bool] = {}
    for path in (FIXTURES / "parsers").glob("*.json"):
        spec = json.loads(path.read_text())
        seen[spec["fact"]] = seen.get(spec["fact"], False) or any("error" in c for c in spec["cases"])
    missing = sorted(set(QUERIES) - set(seen))
    assert missing == []
    no_attack = sorted(f for f, hostile in seen.items()
                       if not hostile and f not in ("sshd.has_match_blocks", "accounts.password_matches", "nft.installed",
                                                    "flows.facts"))
    assert no_attack == []


def test_a_lying_answer_fails_the_host_with_one_line() -> None:
    """Through the real ActionContext over a (scripted) connection: a FactError becomes ActionFailed,
    the engine's one-line host failure, and the command sent is exactly the fact's."""
    from types import SimpleNamespace

    from fakes import FakeConnection

    from ir_toolkit.actions.base import ActionContext
    from ir_toolkit.deadline import Deadline

    conn = FakeConnection("web01", lambda c, cmd, stdin: (0, b"root:x:0:0:root:/root:/bin/bash\n"))
    ctx = ActionContext(host=SimpleNamespace(name="web01", tenant="t"), inventory=None,  # type: ignore[arg-type]
                        case_id="C", conn=conn, deadline=Deadline.after(10))
    with pytest.raises(ActionFailed) as caught:
        ctx.fact(accounts.passwd_entry("alice"))
    assert str(caught.value) == "accounts.passwd_entry: asked for 'alice', the host answered for 'root'"
    assert conn.commands == ["getent passwd alice"]


def test_no_control_refuses_exactly_the_control_characters():
    """The C-level scan refuses what the per-character check did: C0 but TAB, and DEL, anywhere in the value."""
    from ir_toolkit.facts.base import FactError, no_control
    control = {c for c in range(32) if c != 9} | {127}
    for c in range(0x300):
        value = f"key value{chr(c)}tail"
        if c in control:
            with pytest.raises(FactError, match="control characters"):
                no_control("f", "w", value)
        else:
            assert no_control("f", "w", value) == value
    assert no_control("f", "w", "") == ""
    with pytest.raises(FactError):
        no_control("f", "w", "\x1b[31m" + "x" * 10_000)
