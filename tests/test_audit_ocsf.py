"""``irkit audit export --format ocsf|jsonl``: one OCSF 1.8.0 event per record, each valid against the
JSON Schema of its class (built from the pinned ocsf-schema tree: tests/data/ocsf/), traceable to the
signed log (seq, leaf hash, origin), tenant set."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from ir_toolkit.audit import layout
from ir_toolkit.audit.ocsf import CLASSES, MAPPING, to_ocsf
from ir_toolkit.audit.review import read_log
from ir_toolkit.cli.main import main
from tests.audit_case import TENANTS, write_case

CASE = "IR-OCSF"
SCHEMA = json.loads((Path(__file__).parent / "data" / "ocsf" / "ocsf-1.8.0.schema.json").read_text())
BY_UID = {uid: name for name, uid in SCHEMA["class_uids"].items()}


def validator(class_name: str) -> jsonschema.Draft202012Validator:
    document = {**SCHEMA, "$ref": f"#/$defs/classes/{class_name}"}
    return jsonschema.Draft202012Validator(document, format_checker=jsonschema.FormatChecker())


VALIDATORS = {name: validator(name) for name in SCHEMA["$defs"]["classes"]}


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def assert_valid(event: dict) -> str:
    name = BY_UID[event["class_uid"]]
    errors = sorted(VALIDATORS[name].iter_errors(event), key=lambda e: list(e.path))
    assert not errors, f"{event['unmapped']['irkit']['action']} as {name}: " + "; ".join(
        f"{list(e.path)}: {e.message}" for e in errors[:5])
    return name


def test_every_event_validates_against_its_class(signer, capsys):
    write_case(signer, CASE)
    code, out, err = run(["audit", "export", "--case", CASE, "--format", "ocsf"], capsys)
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    rows = read_log(CASE)
    assert len(events) == len(rows)
    used = set()
    for event, (record, leaf) in zip(events, rows, strict=True):
        used.add(assert_valid(event))
        assert event["type_uid"] == event["class_uid"] * 100 + event["activity_id"]
        meta = event["metadata"]
        assert meta["sequence"] == record["seq"] and meta["uid"] == leaf and meta["version"] == "1.8.0"
        assert meta["log_name"] == f"acme/ir/{CASE}" and meta["correlation_uid"] == CASE
        assert meta.get("tenant_uid") == record.get("tenant")
        assert meta["product"]["name"] == "irkit" and meta["product"]["version"]
        assert event["unmapped"]["irkit"]["params"] == record["params"]
    # the classes the issue names, where an irkit record fits them
    assert {SCHEMA["class_uids"][n] for n in used} >= {2005, 3001, 3002, 5040, 6003, 7001, 7003, 7004}
    # a failure keeps its reason; a bundle its SHA-256
    failed = [e for e in events if e["unmapped"]["irkit"]["outcome"] in ("failed", "timed_out")]
    assert failed and all(e["status_detail"] for e in failed) and all(e["severity_id"] == 3 for e in failed)
    directory = {e["unmapped"]["irkit"]["action"]: e for e in events if e["unmapped"]["irkit"]["action"].startswith("directory.")}
    assert directory["directory.account_disabled"]["type_uid"] == 300105
    assert directory["directory.password_reset"]["type_uid"] == 300104
    assert directory["directory.krbtgt_reset"]["user"]["name"] == "krbtgt"
    assert directory["directory.evidence"]["query_evidence"]["query_type_id"] == 14
    by_action = {e["unmapped"]["irkit"]["action"]: e for e in events}
    assert by_action["ansible.task"]["type_uid"] == 700104 and by_action["group.member_removed"]["class_uid"] == 3001
    bundles = [e for e in events if e["class_uid"] == 5040]
    assert all(e["query_evidence"]["file"]["hashes"][0]["algorithm_id"] == 3 for e in bundles)


def test_every_mapped_action_validates_even_with_empty_params():
    for action in [*MAPPING, "directory.password_reset", "directory.disable", "directory.group_add", "x.unknown"]:
        for outcome in ("ok", "failed", "intent"):
            record = {"v": 1, "seq": 7, "ts": "2026-05-01T12:00:00.000001Z", "case": "C", "actor": "a@b",
                      "action": action, "params": {}, "outcome": outcome, "prev": "0" * 64}
            assert_valid(to_ocsf(record, "ab" * 32, "acme/ir/C"))
            assert_valid(to_ocsf({**record, "tenant": "t", "host": "h"}, "ab" * 32, None))


def test_the_schema_rejects_a_broken_event(signer):
    write_case(signer, CASE)
    record, leaf = next((r, l) for r, l in read_log(CASE) if r["action"] == "credential.rotated")
    event = to_ocsf(record, leaf, "acme/ir/x")
    assert assert_valid(event) == "account_change"
    for broken in ({k: v for k, v in event.items() if k != "user"},                  # required attribute
                   {**event, "activity_id": 42},                                       # not in the enum
                   {**event, "type_uid": 300113},                                      # not a type of the class
                   {**event, "metadata": {k: v for k, v in event["metadata"].items() if k != "product"}},
                   {**event, "time": "yesterday"},                                     # type
                   {**event, "mystery": 1}):                                           # unknown attribute
        assert list(VALIDATORS["account_change"].iter_errors(broken)), broken


def test_tenant_filter_and_jsonl(signer, capsys, tmp_path):
    write_case(signer, CASE)
    out_file = tmp_path / "globex.ocsf"
    code, _, err = run(["audit", "export", "--case", CASE, "--format", "ocsf", "--tenant", "globex",
                        "--out", str(out_file)], capsys)
    assert code == 0 and "ocsf export written" in err
    events = [json.loads(x) for x in out_file.read_text().splitlines()]
    assert events and {e["metadata"]["tenant_uid"] for e in events} == {"globex"}
    text = out_file.read_text()
    for other in TENANTS:
        if other != "globex":
            assert other not in text
    code, out, _ = run(["audit", "export", "--case", CASE, "--format", "jsonl"], capsys)
    lines = out.splitlines()
    raw = layout.log_path(CASE).read_bytes().split(b"\n")[:-1]
    assert len(lines) == len(raw)
    first = json.loads(lines[0])
    assert first["seq"] == 1 and first["action"] == "audit.log_created" and len(first["leaf"]) == 64


def test_classes_table_matches_the_pinned_schema():
    for name, (uid, category, *_rest) in CLASSES.items():
        assert SCHEMA["class_uids"][name] == uid
        assert SCHEMA["$defs"]["classes"][name]["properties"]["category_uid"]["const"] == category
    assert SCHEMA["source"]["commit"] == "6fa6499a0f8c9f449d342816e90e5f687c224b0a"
