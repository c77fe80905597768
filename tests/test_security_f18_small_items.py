"""Finding 18 (security review of 0085039), the items of #11a: Makefile passphrase, the test-scrypt
variable, tracebacks in the run log, and the evidence gate on a collection where every file failed.
(The unaudited escrow read is in test_security_f15_escrow_binding.py; Redfish over http in
test_security_f18_redfish_http.py.)

Fails on 0085039: the Makefile exported ``IRKIT_KEY_PASSPHRASE`` for every target; a weak scrypt
cost was applied silently; ``exc_info=True`` wrote only ``"exc_info": true``; the gate opened for a
collection with 0 files collected and every file failed.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ir_toolkit import log
from ir_toolkit.secrets import keystore

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_makefile_gives_the_demo_passphrase_to_the_demo_only(tmp_path):
    probe = tmp_path / "probe.mk"
    probe.write_text(f"include {REPO}/Makefile\nshow-pp: ; @echo \"PP=[$$IRKIT_KEY_PASSPHRASE]\"\n")
    env = {k: v for k, v in os.environ.items() if k != "IRKIT_KEY_PASSPHRASE"}
    out = subprocess.run(["make", "-s", "-f", str(probe), "show-pp"], env=env, capture_output=True, text=True,
                         cwd=REPO)
    assert out.stdout.strip() == "PP=[]", out.stdout + out.stderr
    db = subprocess.run(["make", "-p", "-n", "-f", str(REPO / "Makefile"), "demo"], env=env, capture_output=True,
                        text=True, cwd=REPO).stdout
    assert "demo: IRKIT_KEY_PASSPHRASE = demo-passphrase-change-me" in db
    assert not any(line.startswith("export IRKIT_KEY_PASSPHRASE") for line in (REPO / "Makefile").read_text().splitlines())


def test_test_scrypt_variable_outside_tests_warns(tmp_path):
    env = {**os.environ, "IRKIT_HOME": str(tmp_path / "home"), "IRKIT_KEY_PASSPHRASE": "pp-f18",
           keystore.TEST_SCRYPT_ENV: "10"}
    env.pop("PYTEST_CURRENT_TEST", None)
    proc = subprocess.run([str(Path(os.sys.executable).with_name("irkit")), "keys", "init"], env=env,
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert f"warning: {keystore.TEST_SCRYPT_ENV} is set" in proc.stderr and "weak" in proc.stderr
    env[keystore.TEST_SCRYPT_ENV] = ""
    env["IRKIT_HOME"] = str(tmp_path / "home2")
    proc = subprocess.run([str(Path(os.sys.executable).with_name("irkit")), "keys", "init"], env=env,
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and "warning" not in proc.stderr


def test_tracebacks_go_to_the_run_log_redacted_and_not_to_the_console(tmp_path):
    from ir_toolkit.redaction import register_secret

    register_secret("Tr4ceback-secret-9x")
    console = io.StringIO()
    path = tmp_path / "run.jsonl"
    log.configure(json_path=path, stream=console)
    try:
        try:
            raise RuntimeError("boom with Tr4ceback-secret-9x inside")
        except RuntimeError:
            log.get_logger("irkit").error("internal error", exc_info=True)
    finally:
        log.configure()
    event = json.loads(path.read_text().splitlines()[-1])
    assert "Traceback (most recent call last)" in event["exception"] and "RuntimeError: boom" in event["exception"]
    assert "Tr4ceback-secret-9x" not in path.read_text()
    assert "Traceback" not in console.getvalue() and "internal error" in console.getvalue()


def test_gate_refuses_a_collection_in_which_every_file_failed(signer):
    from ir_toolkit.audit.log import AuditLog
    from ir_toolkit.triage.bundle import BundleWriter, host_dir, new_collection_id
    from ir_toolkit.triage.custody import record_custody
    from ir_toolkit.triage.status import host_evidence_status

    case = "IR-F18"

    def collection(collected: int, failed: int):
        writer = BundleWriter(host_dir(case, "globex", "web01") / new_collection_id())
        files = [{"source_path": f"/etc/f{i}", "status": "failed", "error": "host said no"} for i in range(failed)]
        return writer.finish({"files": files, "outputs": []}, b"",
                             {"case": case, "tenant": "globex", "host": "web01", "status": "complete_with_errors",
                              "counts": {"collected": collected, "failed": failed}})

    with AuditLog.open(case, origin=f"acme/ir/{case}", signer=signer) as audit:
        coll = collection(0, 40)
        record_custody(audit, case, coll, coll.seal())
        status = host_evidence_status(case, "globex", "web01")
        assert not status.ready and "every file failed (40)" in status.reason
    assert not host_evidence_status(case, "globex", "web01").ready
