"""``irkit audit report``: the verdict, the timeline, per-tenant facts; a tenant's report holds
nothing of other tenants; hostile host strings are escaped in HTML and Markdown."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from ir_toolkit.audit import layout
from ir_toolkit.audit.report import esc, md, render_html, render_markdown
from ir_toolkit.audit.review import build_review
from ir_toolkit.cli.main import main
from tests.audit_case import HOSTILE, TENANTS, secrets_of_others, write_case, write_inventory

CASE = "IR-REP"


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.fixture
def case(signer, tmp_path):
    owned = write_case(signer, CASE)
    return {"owned": owned, "inventory": write_inventory(tmp_path / "inv.yml"), "tmp": tmp_path}


class Elements(HTMLParser):
    """Every start tag and attribute of a page (what a browser would build)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> Elements:
    parser = Elements()
    parser.feed(page)
    return parser


def test_full_report_has_verdict_timeline_and_every_fact(case, capsys):
    out = case["tmp"] / "r.html"
    code, _, err = run(["audit", "report", "--case", CASE, "--inventory", str(case["inventory"]),
                        "--out", str(out)], capsys)
    assert code == 0, err
    page = out.read_text()
    assert f"report written: {out}" in err
    # verdict first, with checkpoint, witness line and the key fingerprint
    assert page.index('id="verdict"') < page.index('id="timeline"') < page.index('id="tenant-0"')
    assert "Audit log VALID" in page and "SHA256:" in page and "witness cosignatures" in page
    review = build_review(CASE)
    cp = review["verification"]["checkpoint"]
    assert cp["size"] == review["verification"]["tree_size"] and cp["root"] in page
    # timeline: one row per tenant, segments for phases and waves, the failure and time-out marked
    tags = parse(page).tags
    assert sum(1 for t, a in tags if t == "g" and a.get("class") == "tenant-row") == len(TENANTS)
    assert sum(1 for t, a in tags if t == "g" and a.get("class") == "segment") >= 6 * len(TENANTS)
    assert any(a.get("class") == "mark mark-timed_out" for _, a in tags)
    assert any(a.get("class") == "mark mark-failed" for _, a in tags)
    initech = next(t for t in review["tenants"] if t["name"] == "initech")
    waves = {s["wave"] for s in initech["timeline"]["segments"] if s["phase"] == "isolate"}
    assert waves == {1, 2}
    # every host, address, account and bundle hash of every tenant
    for tenant, data in case["owned"].items():
        for value in data["hosts"] + data["addresses"] + TENANTS[tenant]["accounts"] + data["bundles"]:
            assert value in page, value
    # per-tenant facts
    assert {e["host"] for e in initech["isolated"]} == {"initech-app01", "initech-files01"}
    assert {e["host"] for e in initech["rotated"]} == {"initech-app01"}
    assert {e["host"] for e in initech["reimaged"]} == {"initech-app01"}
    assert {f["outcome"] for f in initech["failures"]} == {"timed_out", "failed"}
    assert [a["approver"] for a in initech["approvals"]] == ["cio@initech"]
    accounts = {(a["action"], a["account"]) for a in initech["accounts"]}
    assert ("directory.password_reset", "it-peter.gibbons") in accounts
    assert ("directory.account_disabled", "it-peter.gibbons") in accounts
    assert ("directory.evidence", "it-peter.gibbons") in accounts
    assert any(a["account"].startswith("krbtgt") for a in initech["accounts"])
    assert "it-peter.gibbons removed from group Administrators" in {r["what"] for r in initech["revoked"]}
    directory_export = [e for e in initech["evidence"] if e["status"] == "directory export"]
    assert len(directory_export) == 1 and directory_export[0]["sha256"] in page
    assert all(len(e["sha256"]) == 64 and e["custody"] is not None for e in initech["evidence"])
    assert "did not succeed" in initech["statement"] and "Initech Inc" in page


@pytest.mark.parametrize("fmt", ["html", "md", "json"])
def test_tenant_report_names_nothing_of_other_tenants(case, capsys, fmt):
    for tenant in TENANTS:
        out = case["tmp"] / f"{tenant}.{fmt}"
        code, _, err = run(["audit", "report", "--case", CASE, "--tenant", tenant, "--format", fmt,
                            "--inventory", str(case["inventory"]), "--out", str(out)], capsys)
        assert code == 0, err
        text = out.read_text()
        own = case["owned"][tenant]
        for value in own["hosts"] + own["addresses"] + own["bundles"]:
            assert value in text, (tenant, value)
        for secret in secrets_of_others(case["owned"], tenant):
            assert secret not in text, (tenant, fmt, secret)
        # no count of the whole run (run.end counted every tenant's hosts)
        assert "987654321" not in text and "3 tenant" not in text
        if fmt == "json":
            data = json.loads(text)
            assert [t["name"] for t in data["tenants"]] == [tenant]


def test_unknown_tenant_is_one_line_exit_2(case, capsys):
    code, _, err = run(["audit", "report", "--case", CASE, "--tenant", "nosuch", "--out", "-"], capsys)
    assert code == 2 and "no records of tenant 'nosuch'" in err and "Traceback" not in err


def test_hostile_host_strings_are_inert_in_html(case, capsys):
    out = case["tmp"] / "r.html"
    code, _, err = run(["audit", "report", "--case", CASE, "--out", str(out)], capsys)
    assert code == 0, err
    page = out.read_text()
    elements = parse(page)
    # no element, attribute or script the log's strings could have introduced
    assert not [t for t, _ in elements.tags if t in ("script", "img", "iframe", "object", "embed", "link", "a")]
    assert not [a for _, attrs in elements.tags for a in attrs if a.startswith("on")]
    assert "<script" not in page and "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
    assert "\x1b" not in page and "\u202e" not in page
    # the hostile text is shown, escaped, so a reader sees what the host sent
    assert html.escape('<script>alert("pwned")</script>', quote=True) in page
    assert "\\x1b[31m" in page and "\\u202e" in page
    # a policy that forbids scripts and fetches even if something slipped through
    csp = next(a["content"] for t, a in elements.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in csp and "script-src" not in csp


def test_hostile_strings_in_markdown_are_inert(case):
    text = render_markdown(build_review(CASE))
    assert "<script" not in text and "<img" not in text and "\x1b" not in text
    assert "&lt;script&gt;" in text
    # a host name cannot break a table row or start a link
    assert md("a|b[c](http://x)") == "a\\|b\\[c\\](http://x)"
    assert esc('"><svg onload=x>') == "&quot;&gt;&lt;svg onload=x&gt;"


def test_invalid_log_report_says_invalid_and_exits_1(case, capsys):
    path = layout.log_path(CASE)
    path.write_bytes(path.read_bytes().replace(b"globex-web01", b"globex-web99", 1))
    out = case["tmp"] / "bad.html"
    code, _, err = run(["audit", "report", "--case", CASE, "--out", str(out)], capsys)
    assert code == 1 and "INVALID" in err
    page = out.read_text()
    assert "Audit log INVALID" in page and 'class="verdict invalid"' in page and "Reason: seq " in page
    statement = build_review(CASE)["tenants"][0]["statement"]
    assert "did NOT verify" in statement


def test_default_output_path_and_stdout(case, capsys):
    code, out, err = run(["audit", "report", "--case", CASE, "--format", "md"], capsys)
    assert code == 0, err
    path = layout.audit_dir(CASE).parent / "reports" / "report.md"
    assert path.exists() and str(path) in err and out == ""
    code, out, _ = run(["audit", "report", "--case", CASE, "--format", "json", "--out", "-"], capsys)
    assert code == 0 and json.loads(out)["case"] == CASE


def test_report_with_pinned_key_and_external_checkpoint(case, signer, capsys, tmp_path):
    saved = tmp_path / "client.note"
    saved.write_text(layout.checkpoint_path(CASE).read_text())
    review = build_review(CASE, keys=[signer.verifier_key()], checkpoints=[saved])
    v = review["verification"]
    assert v["ok"] and v["anchored"] and v["checkpoint"]["external"]
    page = render_html(review)
    assert "external, anchored" in page and re.search(r"anchored through seq \d+", page)
