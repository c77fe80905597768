"""Security review finding 12: no trust on first use after a reimage unless the playbook says so.

The review: redfish and command providers report no host key, and ``accept_reimaged_host_key`` pinned
whatever key answered at the address after the reinstall, so a compromised neighbour that claims the
IP during the install window became "the clean reimaged host". Now the key must be the one the
provider reported or the operator confirmed (``--host-key`` / ``host_keys:``); trusting the first key
offered needs ``accept_first_key: true`` and is recorded as ``trust: first_use``; by default a reimage
whose key nobody can confirm is refused with one line before the host is touched.
"""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import paramiko
import pytest

from ir_toolkit.actions.base import ActionContext, ActionFailed
from ir_toolkit.actions.reimage import ReimageHost, ReimageParams, accept_reimaged_host_key
from ir_toolkit.reimage.history import RECORD_KEY_ACCEPTED, RECORD_KEY_REFUSED, RECORD_PROVIDER, RECORD_START
from ir_toolkit.transports.hostkeys import case_pins
from ir_toolkit.deadline import Deadline
from ir_toolkit.inventory import load_inventory
from ir_toolkit.inventory.model import Bmc
from ir_toolkit.run.generated import reimage_playbook
from ir_toolkit.transports.hostkeys import KnownHosts, fingerprint

REPO = Path(__file__).resolve().parents[1]
ACME = REPO / "inventories" / "acme.yml"
CASE = "F12-1"
ADDRESS = "198.18.1.20"


def _key() -> paramiko.PKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()).decode()
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem))


def _fp(key: paramiko.PKey) -> str:
    return fingerprint(key.asbytes())


@pytest.fixture
def audit(irkit_home):
    from ir_toolkit.audit.log import AuditLog

    log = AuditLog.open(CASE, origin=f"acme/ir/{CASE}")
    yield log
    log.close()


def _ctx(audit, host_name: str = "globex-web01", bmc: Bmc | None = None) -> ActionContext:
    inventory = load_inventory(ACME)
    host = inventory.host(host_name)
    if bmc is not None:
        object.__setattr__(host, "bmc", bmc)
    pool = SimpleNamespace(known_hosts=KnownHosts(), drop=lambda h: None)
    return ActionContext(host, inventory, CASE, conn=None, deadline=Deadline.after(30),  # type: ignore[arg-type]
                         journal=audit, pool=pool, actor="tester")


def _records(action: str) -> list[dict]:
    from ir_toolkit.audit.log import iter_records

    return [r for r in iter_records(CASE) if r["action"] == action]


def _ok_reimage(audit) -> int:
    return audit.append_durable(action=RECORD_PROVIDER, actor="t", tenant="globex", host="globex-web01",
                                params={"provider": "redfish"}, outcome="ok")


def test_f12_first_key_after_a_redfish_reimage_is_not_trusted_by_default(audit):
    ctx = _ctx(audit)
    seq = _ok_reimage(audit)
    impostor = _key()  # whoever answers at the address after the reinstall
    with pytest.raises(ActionFailed) as exc:
        accept_reimaged_host_key(ctx, impostor, old_fp=_fp(_key()), reimage_seq=seq, reported_fp=None,
                                 provider="redfish")
    message = str(exc.value)
    assert "\n" not in message and "cannot be confirmed" in message and "accept_first_key: true" in message
    assert "--host-key globex-web01=SHA256:" in message
    assert case_pins(CASE, ADDRESS, 22) == set()
    refused = _records(RECORD_KEY_REFUSED)
    assert refused and refused[-1]["params"]["trust"] is None
    assert refused[-1]["params"]["new_host_key_fingerprint"] == _fp(impostor)


def test_f12_operator_confirmed_key_is_required_to_match(audit):
    ctx = _ctx(audit)
    seq = _ok_reimage(audit)
    real, impostor = _key(), _key()
    with pytest.raises(ActionFailed, match="possible interception.*operator confirmed"):
        accept_reimaged_host_key(ctx, impostor, old_fp=None, reimage_seq=seq, reported_fp=None,
                                 confirmed_fp=_fp(real), provider="redfish")
    assert case_pins(CASE, ADDRESS, 22) == set()
    # provider and operator disagree: refused too
    with pytest.raises(ActionFailed, match="reported host key .* but the operator confirmed"):
        accept_reimaged_host_key(ctx, real, old_fp=None, reimage_seq=seq, reported_fp=_fp(impostor),
                                 confirmed_fp=_fp(real), provider="redfish")
    facts = accept_reimaged_host_key(ctx, real, old_fp=None, reimage_seq=seq, reported_fp=None,
                                     confirmed_fp=_fp(real), provider="redfish")
    assert facts["trust"] == "operator" and case_pins(CASE, ADDRESS, 22) == {_fp(real)}
    accepted = _records(RECORD_KEY_ACCEPTED)[-1]["params"]
    assert accepted["operator_confirmed_fingerprint"] == _fp(real) and accepted["accept_first_key"] is False


def test_f12_accept_first_key_is_explicit_and_recorded(audit):
    ctx = _ctx(audit)
    seq = _ok_reimage(audit)
    first = _key()
    facts = accept_reimaged_host_key(ctx, first, old_fp=None, reimage_seq=seq, reported_fp=None,
                                     accept_first_key=True, provider="command")
    assert facts["trust"] == "first_use"
    accepted = _records(RECORD_KEY_ACCEPTED)[-1]["params"]
    assert accepted["trust"] == "first_use" and accepted["accept_first_key"] is True
    assert case_pins(CASE, ADDRESS, 22) == {_fp(first)}


def test_f12_unconfirmable_reimage_is_refused_before_the_host_is_touched(audit, tmp_path):
    ran = tmp_path / "reimage-ran"
    bmc = Bmc(provider="command", command=["sh", "-c", f"touch {ran}", "{host}"])
    ctx = _ctx(audit, bmc=bmc)
    with pytest.raises(ActionFailed) as exc:
        ReimageHost().apply(ctx, ReimageParams())
    assert "cannot be confirmed (the command provider reports none)" in str(exc.value)
    assert not ran.exists(), "the reimage command ran although the new key could never be confirmed"
    assert _records(RECORD_START) == []


def test_f12_irkit_reimage_options_reach_the_step():
    template = {"version": 1, "name": "r", "phases": [{"name": "p", "steps": [
        {"name": "s", "action": "host.reimage", "params": {"reason": "x"}}]}]}
    fp = "SHA256:" + "A" * 43
    data = reimage_playbook(template, hosts=["globex-web01"], image_url=None, reason=None, old_password=None,
                            evidence_override=None, destructive=set(), host_keys={"globex-web01": fp},
                            accept_first_key=True)
    params = data["phases"][0]["steps"][0]["params"]
    assert params["host_keys"] == {"globex-web01": fp} and params["accept_first_key"] is True
    assert ReimageParams(**params).host_keys == {"globex-web01": fp}
    with pytest.raises(ValueError, match="not a SHA256"):
        ReimageParams(host_keys={"globex-web01": "MD5:aa:bb"})
