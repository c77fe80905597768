"""Redfish reimage failures through the whole engine: `irkit reimage` on lab hosts whose BMCs are the
sushy-tools emulator. Each failure (wrong BMC credentials, no VirtualMedia, a host that never powers back
on) ends that host's reimage with a clear one-line message and a `reimage.provider` audit record, and the
running host is left as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from containment_helpers import home, irkit, keyed_env
from sushy_fixture import FakeSystem, ImageServer, RedfishShim, ShimRules, SushyEmulator, make_image

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[1]
USER = "irkit-bmc"
PASSWORD = "Bmc-pass-5c1e0a77d"


@pytest.fixture(scope="module")
def rf(lab_factory, tmp_path_factory):
    lab = lab_factory("rfbmc", tenants=1, hosts_per_tenant=3)
    names = [h["name"] for h in lab.info["hosts"]]
    work = tmp_path_factory.mktemp("rfbmc")
    systems = [FakeSystem(name, power_state="On") for name in names]
    emulator = SushyEmulator(work / "emu", systems, users={USER: PASSWORD})
    minimal = SushyEmulator(work / "emu-min", [FakeSystem(names[1], power_state="On")], users={USER: PASSWORD},
                            feature_set="minimum")
    (work / "images").mkdir()
    make_image(work / "images", "installer.iso")
    started: list = []
    try:
        emulator.start()
        started.append(emulator)
        minimal.start()
        started.append(minimal)
        shim = RedfishShim(emulator.url, ShimRules(swallow_power_on=True)).start()
        started.append(shim)
        images = ImageServer(work / "images").start()
        started.append(images)
        for name, value in (("good", PASSWORD), ("wrong", "Not-the-bmc-password-1")):
            (work / name).write_text(value + "\n")
            (work / name).chmod(0o600)
        inv = yaml.safe_load(Path(lab.inventory_path).read_text())
        bmcs = [
            (emulator.url, "wrong", systems[0].uuid),      # wrong credentials
            (minimal.url, "good", None),                   # no VirtualMedia at all
            (shim.url, "good", systems[2].uuid),           # accepts power-on, never comes up
        ]
        for host, (url, secret, system_id) in zip(inv["tenants"][0]["hosts"], bmcs):
            host["bmc"] = {"provider": "redfish", "url": url, "allow_insecure_http": True, "username": USER, "password": f"file:{work / secret}",
                           "verify_tls": False, **({"system_id": system_id} if system_id else {})}
        inventory = work / "inventory.yml"
        inventory.write_text(yaml.safe_dump(inv, sort_keys=False))
        playbook = yaml.safe_load((REPO / "playbooks/reimage.yml").read_text())
        step = playbook["phases"][0]["steps"][0]
        step["params"].update({"power_on_timeout": 3, "power_off_timeout": 30, "media_timeout": 15,
                               "override_grace": 0, "poll_interval": 0.2, "accept_first_key": True})
        step["timeout"] = 120
        custom = work / "reimage.yml"
        custom.write_text(yaml.safe_dump(playbook, sort_keys=False))
        env = keyed_env(lab)
        irkit(env, "triage", "--inventory", str(inventory), "--case", "RF-1", check=0)
        yield lab, env, inventory, custom, images, names
    finally:
        for thing in reversed(started):
            thing.stop()


def test_redfish_failures_end_each_reimage_with_a_message_and_an_audit_record(rf):
    lab, env, inventory, playbook, images, names = rf
    keys_before = {h["name"]: h["host_key_fingerprint"] for h in lab.info["hosts"]}
    args = ["reimage", "--inventory", str(inventory), "--case", "RF-1", "--yes", "--format", "json",
            "--playbook", str(playbook), "--image-url", f"{images.url}/installer.iso"]
    for name in names:
        args += ["--hosts", name]
    proc = irkit(env, *args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout)
    messages = {name: summary["hosts"][name]["message"] for name in names}
    assert all(summary["hosts"][n]["status"] == "failed" for n in names)
    assert "rejected the credentials" in messages[names[0]] and "HTTP 401" in messages[names[0]]
    assert "VirtualMedia" in messages[names[1]]
    assert "did not report PowerState On within 3s" in messages[names[2]]
    assert all("\n" not in m for m in messages.values())
    assert "Not-the-bmc-password" not in proc.stdout + proc.stderr and PASSWORD not in proc.stdout + proc.stderr

    from ir_toolkit.audit.log import iter_records

    with home(env):
        recs = list(iter_records("RF-1"))
    provider = {r["host"]: r for r in recs if r["action"] == "reimage.provider"}
    assert set(provider) == set(names)
    assert all(r["outcome"] == "failed" for r in provider.values())
    assert {h: r["params"]["error_kind"] for h, r in provider.items()} == {
        names[0]: "auth", names[1]: "no_virtual_media", names[2]: "deadline"}
    assert all(r["params"]["message"] in messages[h] for h, r in provider.items())
    text = json.dumps(list(provider.values()))
    assert "Not-the-bmc-password" not in text and PASSWORD not in text
    assert irkit(env, "audit", "verify", "--case", "RF-1").returncode == 0
    # nothing was reinstalled: the hosts still present their old keys
    info = lab.refresh()
    assert {h["name"]: h["host_key_fingerprint"] for h in info["hosts"]} == keys_before
