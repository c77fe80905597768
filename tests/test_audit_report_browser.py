"""The HTML report in a real browser (headless Chromium over the DevTools protocol): no console
errors, no script runs (not even the hostile host's), no fetch, every host present, the timeline
drawn. The lab test does it for a real containment run and keeps the screenshot for docs/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ir_toolkit.audit.review import build_review
from tests.audit_case import HOSTILE, write_case, write_inventory
from tests.chromium import Browser, chromium_path, inspect

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(chromium_path() is None, reason="chromium is not installed (.ci/run installs it)")


def check_page(page, hosts: list[str], tenants: int) -> dict:
    info = inspect(page)
    assert page.problems() == []
    assert info["scripts"] == 0
    assert [u for u in page.requests() if not u.startswith("file://")] == []
    for host in hosts:
        assert host in info["text"], host
    tl = info["timeline"]
    assert tl and tl["width"] > 600 and tl["height"] > 40 * tenants
    assert tl["rows"] == tenants and tl["drawn"] >= tenants
    return info


def test_hostile_report_renders_inert_in_chromium(signer, tmp_path):
    write_case(signer, "IR-WEB")
    from ir_toolkit.audit.report import render_html

    page_path = tmp_path / "report.html"
    page_path.write_text(render_html(build_review("IR-WEB")))
    with Browser() as browser:
        page = browser.open(page_path.as_uri())
        hosts = ["globex-dc01", "globex-web01", "initech-app01", "initech-files01", "umbrella-ehr01"]
        info = check_page(page, hosts, tenants=3)
        assert info["timeline"]["marks"] >= 2
        assert "Audit log VALID" in info["verdict"]
        # the hostile string is on the page as text; nothing of it ran or became an element
        assert '<script>alert("pwned")</script>' in info["text"]
        assert page.evaluate("document.querySelectorAll('img,script,iframe,object,embed').length") == 0
        assert page.evaluate("typeof window.pwned") == "undefined"
        # and the policy would have stopped it: an injected script is refused by the CSP
        page.evaluate("(() => { const s = document.createElement('script'); s.textContent = 'window.pwned=1';"
                      " document.body.appendChild(s); })()")
        assert page.evaluate("typeof window.pwned") == "undefined"
    _ = HOSTILE


@pytest.mark.lab
def test_report_of_a_real_containment_run_renders_in_chromium(lab_factory, tmp_path):
    lab = lab_factory("replab", tenants=2, hosts_per_tenant=2)
    env = {**os.environ, "IRKIT_HOME": str(lab.home), "IRKIT_KEY_PASSPHRASE": "report lab passphrase",
           "IRKIT_INSECURE_TEST_SCRYPT_LOG2N": "10"}
    env.pop("IRKIT_INVENTORY", None)
    irkit = str(Path(sys.executable).with_name("irkit"))

    def cli(*args):
        return subprocess.run([irkit, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=900)

    assert cli("keys", "init", "--if-missing").returncode == 0
    proc = cli("contain", "--inventory", str(lab.inventory_path), "--case", "REP-LAB", "--yes")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    out = tmp_path / "report.html"
    proc = cli("audit", "report", "--case", "REP-LAB", "--inventory", str(lab.inventory_path), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    from ir_toolkit.inventory import load_inventory

    inventory = load_inventory(lab.inventory_path)
    hosts = [h.name for h in inventory.hosts()]
    with Browser() as browser:
        page = browser.open(out.as_uri())
        info = check_page(page, hosts, tenants=len(inventory.tenants))
        for host in inventory.hosts():
            assert str(host.address) in info["text"]
    # the real run's OCSF export validates, every event
    from tests.test_audit_ocsf import assert_valid

    proc = cli("audit", "export", "--case", "REP-LAB", "--format", "ocsf")
    assert proc.returncode == 0, proc.stderr
    import json

    classes = {assert_valid(json.loads(line)) for line in proc.stdout.splitlines()}
    assert {"api_activity", "account_change", "evidence_info", "network_remediation_activity"} <= classes
    # the tenant export of the real run verifies with only the public key, and fails when a record is dropped
    vkey = json.loads(cli("keys", "show", "--format", "json").stdout)["verifier_key"]
    export_dir = tmp_path / "export"
    proc = cli("audit", "export", "--case", "REP-LAB", "--tenant", inventory.tenants[0].name, "--out", str(export_dir))
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-I", str(export_dir / "verify_export.py"), str(export_dir), "--key", vkey],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("VERIFIED"), proc.stdout + proc.stderr
    lines = (export_dir / "records.jsonl").read_bytes().split(b"\n")
    (export_dir / "records.jsonl").write_bytes(b"\n".join(lines[:3] + lines[4:]))
    proc = subprocess.run([sys.executable, "-I", str(export_dir / "verify_export.py"), str(export_dir), "--key", vkey],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1 and "dropped" in proc.stdout
    # one tenant's report names nothing of the other, in the browser's text too
    first, second = inventory.tenants[0], inventory.tenants[1]
    out1 = tmp_path / "t1.html"
    proc = cli("audit", "report", "--case", "REP-LAB", "--tenant", first.name, "--inventory",
               str(lab.inventory_path), "--out", str(out1))
    assert proc.returncode == 0, proc.stderr
    text = out1.read_text()
    for host in second.hosts:
        assert host.name not in text and str(host.address) not in text
    assert second.name not in text
