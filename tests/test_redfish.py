"""The Redfish reimage path against the real sushy-tools emulator (no HTTP mocks).

One emulator (fake driver, Basic auth from a bcrypt htpasswd, loopback, free port)
serves several fake systems, one per scenario, so tests do not depend on each
other's power state. A second one runs ``--feature-set minimum`` (no VirtualMedia
links). A shim proxy in front of the first emulator simulates what the emulator
cannot: a host that never powers back on, a VirtualMedia link that answers 404,
and the iLO/iDRAC layout with VirtualMedia under ``/Managers/<id>``.

The emulator applies power changes 1-11 s after the request (random), so these
tests poll every 0.1-0.2 s to keep the total time low.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import rfc8785

from ir_toolkit import log
from ir_toolkit.reimage import (
    RedfishProvider,
    ReimageOptions,
    ReimageStatus,
    provider_for,
    run_to_completion,
)
from ir_toolkit.errors import EXIT_FAILED, InputError
from ir_toolkit.inventory.model import Bmc, Host, Tenant
from ir_toolkit.transports.redfish import BmcError, RedfishClient, RedfishTimeouts

from sushy_fixture import (
    EmulatorView,
    FakeSystem,
    ImageServer,
    RedfishShim,
    ShimRules,
    SushyEmulator,
    make_image,
)

USER = "irkit-bmc"
PASSWORD = "Bmc-pass-7f3a9c21e"
WRONG_PASSWORD = "Wrong-pass-19d2e7"
FAST = RedfishTimeouts(connect=3, read=10, retries=1, retry_delay=0.1)

SYSTEMS = {
    "flow": FakeSystem("globex-web01", power_state="On"),
    "prov": FakeSystem("globex-web02", power_state="Off"),
    "dead": FakeSystem("globex-db01", power_state="Off"),
    "ilo": FakeSystem("globex-dc01", power_state="Off", uuid="1"),
    "nomedia": FakeSystem("globex-jump01", power_state="Off"),
    "auth": FakeSystem("initech-app01", power_state="Off"),
    "pxe": FakeSystem("initech-app02", power_state="Off"),
}


# ------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bmc-secrets")
    for name, value in (("good", PASSWORD), ("wrong", WRONG_PASSWORD)):
        (path / name).write_text(value + "\n")
        (path / name).chmod(0o600)
    return path


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SushyEmulator]:
    emu = SushyEmulator(tmp_path_factory.mktemp("sushy"), list(SYSTEMS.values()), users={USER: PASSWORD})
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture(scope="module")
def view(emulator: SushyEmulator) -> EmulatorView:
    return EmulatorView(emulator.url, (USER, PASSWORD))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageServer]:
    root = tmp_path_factory.mktemp("images")
    make_image(root, "installer.iso")
    make_image(root, "other.iso")
    server = ImageServer(root).start()
    yield server
    server.stop()


@pytest.fixture
def shim_factory(emulator: SushyEmulator) -> Iterator:
    shims: list[RedfishShim] = []

    def make(rules: ShimRules) -> RedfishShim:
        shim = RedfishShim(emulator.url, rules).start()
        shims.append(shim)
        return shim

    yield make
    for shim in shims:
        shim.stop()


@pytest.fixture
def run_log(tmp_path: Path) -> Iterator[Path]:
    """Capture the structured run log in a file, so tests can check it holds no secret."""
    path = tmp_path / "run.jsonl"
    log.configure(json_path=path, verbosity=2)
    yield path
    log.configure()


def make_host(key: str, url: str, secrets_dir: Path, *, password_file: str = "good",
              system_id: str | None = "auto", name: str | None = None) -> Host:
    system = SYSTEMS[key]
    bmc = Bmc(provider="redfish", url=url, username=USER, password=f"file:{secrets_dir / password_file}",
              verify_tls=False, system_id=system.uuid if system_id == "auto" else system_id,
              allow_insecure_http=url.startswith("http://"))
    tenant = Tenant(name="globex", hosts=[Host(name=name or system.name, address="198.18.1.20", bmc=bmc)])
    return tenant.hosts[0]


def options(images: ImageServer, **overrides) -> ReimageOptions:
    base = dict(
        image_url=f"{images.url}/installer.iso", media_timeout=10, power_off_timeout=20,
        power_on_timeout=20, override_grace=0, poll_interval=0.1, redfish_timeouts=FAST,
    )
    base.update(overrides)
    return ReimageOptions(**base)


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def assert_one_line_failure(result, kind: str) -> None:
    assert result.status is ReimageStatus.FAILED
    assert result.error_kind == kind
    assert result.message and "\n" not in result.message
    assert "Traceback" not in result.message
    err = result.error()
    assert err is not None and str(err) == result.message
    record = result.to_record()
    assert record["status"] == "failed" and record["error_kind"] == kind
    assert record["steps"][-1]["phase"] == "failed"
    rfc8785.dumps(record)  # fit for the audit log (canonical JSON)


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text
        assert WRONG_PASSWORD not in text


# ------------------------------------------------------------------------ the full flow, step by step

def test_client_flow_step_by_step(emulator, view, images, secrets_dir) -> None:
    """insert -> boot override -> reset -> poll until On -> eject, checking the emulator after each."""
    sid = SYSTEMS["flow"].uuid
    host = make_host("flow", emulator.url, secrets_dir)
    client = RedfishClient.from_bmc(host.bmc, timeouts=FAST)
    client.connect()
    try:
        system = client.find_system(sid)
        assert system.path == f"/redfish/v1/Systems/{sid}"
        media = client.find_virtual_media(system, "Cd")
        assert media.path == f"/redfish/v1/Systems/{sid}/VirtualMedia/Cd"

        image = f"{images.url}/installer.iso"
        before = len(images.requests)
        state = client.insert_media(media, image)
        assert state.inserted and state.image == image
        held = view.media(sid)
        assert held["Inserted"] is True and held["Image"] == image and held["ImageName"] == "installer.iso"
        assert "/installer.iso" in images.requests[before:]  # the BMC really fetched the image

        # Inserting the same image again changes nothing; a different one replaces it.
        assert client.insert_media(media, image).inserted
        other = f"{images.url}/other.iso"
        assert client.insert_media(media, other).image == other
        assert view.media(sid)["Image"] == other
        client.insert_media(media, image)

        override = client.set_boot_override(system, "Cd")
        boot = view.boot(sid)
        assert boot["BootSourceOverrideTarget"] == "Cd" == override.target
        # Emulator quirk: "Once" is reported as "Continuous" (the client reports what it sees).
        assert override.enabled == boot["BootSourceOverrideEnabled"] == "Continuous"

        assert view.power(sid) == "On"
        assert client.power_off(system) == "ForceOff"
        wait_for(lambda: client.power_state(system) == "Off")
        assert view.power(sid) == "Off"
        assert client.power_on(system) == "On"
        wait_for(lambda: client.power_state(system) == "On")
        assert view.power(sid) == "On"

        state = client.eject_media(media)
        assert not state.inserted
        held = view.media(sid)
        assert held["Inserted"] is False and held["Image"] == ""

        after = client.clear_boot_override(system)
        assert not after.active
        assert view.boot(sid)["BootSourceOverrideTarget"] != "Cd"
    finally:
        client.close()


def test_pxe_boot_override_and_provider(emulator, view, secrets_dir) -> None:
    sid = SYSTEMS["pxe"].uuid
    with RedfishClient.from_bmc(make_host("pxe", emulator.url, secrets_dir).bmc, timeouts=FAST) as client:
        system = client.find_system(SYSTEMS["pxe"].name)  # by Name works too
        assert system.path.endswith(sid)
        assert client.set_boot_override(system, "Pxe").target == "Pxe"
        assert view.boot(sid)["BootSourceOverrideTarget"] == "Pxe"
        client.clear_boot_override(system)
        assert view.boot(sid)["BootSourceOverrideTarget"] == "Hdd"
        with pytest.raises(InputError):
            client.set_boot_override(system, "Usb")
        with pytest.raises(BmcError) as exc:
            client.find_system("no-such-system")
        assert exc.value.kind == "not_found"
        with pytest.raises(BmcError) as exc:
            client.find_system(None)  # seven systems: must be named
        assert exc.value.kind == "config" and "set bmc.system_id" in str(exc.value)

    # The provider with a network install: no media, one-time Pxe, power on.
    host = make_host("pxe", emulator.url, secrets_dir)
    result = run_to_completion(provider_for(host, ReimageOptions(
        boot_target="Pxe", power_on_timeout=20, override_grace=0, redfish_timeouts=FAST)), host, interval=0.1)
    assert result.status is ReimageStatus.DONE, result.message
    assert [s.phase for s in result.steps] == [
        "start", "connect", "boot-override", "power-on", "wait-on", "clear-override", "done"]
    assert result.facts["image_url"] is None and "virtual_media" not in result.facts
    assert view.power(sid) == "On" and view.boot(sid)["BootSourceOverrideTarget"] == "Hdd"
    assert view.media(sid)["Inserted"] is False


# ------------------------------------------------------------------------ the provider end to end

def test_provider_full_flow(emulator, view, images, secrets_dir, run_log) -> None:
    sid = SYSTEMS["prov"].uuid
    host = make_host("prov", emulator.url, secrets_dir)
    provider = provider_for(host, options(images))
    assert isinstance(provider, RedfishProvider)
    before = len(images.requests)
    result = run_to_completion(provider, host, interval=0.1)

    assert result.status is ReimageStatus.DONE, result.message
    assert result.message == f"{host.name}: installer booted from Cd via {emulator.url}"
    phases = [s.phase for s in result.steps]
    assert phases == ["start", "connect", "find-media", "insert", "wait-media", "boot-override",
                      "power-on", "wait-on", "clear-override", "eject", "done"]
    facts = result.facts
    assert facts["initial_power"] == "Off" and facts["power_on_reset"] == "On"
    assert facts["boot_override_reported"] == "Continuous"  # emulator quirk, handled by clearing
    assert facts["final_power"] == "On"
    assert facts["final_boot_override"]["target"] != "Cd"
    assert facts["media_after"] == {"inserted": False, "image": None}
    assert "/installer.iso" in images.requests[before:]

    # What the BMC holds now.
    assert view.power(sid) == "On"
    assert view.media(sid)["Inserted"] is False
    assert view.boot(sid)["BootSourceOverrideTarget"] == "Hdd"

    record = result.to_record()
    assert record["facts"]["bmc_password_ref"].startswith("file:")
    assert_no_secret(json.dumps(record), run_log.read_text())
    assert "reimage step" in run_log.read_text()


def test_provider_ilo_layout_media_under_managers(emulator, view, images, secrets_dir, shim_factory) -> None:
    """VirtualMedia only under /Managers/1 (iLO/iDRAC style): found by following ManagedBy."""
    shim = shim_factory(ShimRules(
        aliases=[("/redfish/v1/Managers/1/VirtualMedia", "/redfish/v1/Systems/1/VirtualMedia")],
        drop_fields={r"^/redfish/v1/Systems/1/?$": ["VirtualMedia"]},
    ))
    host = make_host("ilo", shim.url, secrets_dir, system_id="1")
    result = run_to_completion(provider_for(host, options(images)), host, interval=0.1)
    assert result.status is ReimageStatus.DONE, result.message
    assert result.facts["virtual_media"] == "/redfish/v1/Managers/1/VirtualMedia/Cd"
    assert shim.requests_to("POST", r"^/redfish/v1/Managers/1/VirtualMedia/Cd/Actions/VirtualMedia.InsertMedia$")
    assert shim.requests_to("POST", r"^/redfish/v1/Managers/1/VirtualMedia/Cd/Actions/VirtualMedia.EjectMedia$")
    assert not shim.requests_to("GET", r"^/redfish/v1/Systems/1/VirtualMedia")
    assert view.power("1") == "On"
    assert view.media("1")["Inserted"] is False


# ------------------------------------------------------------------------ failure cases

def test_bmc_never_powers_on_hits_deadline(emulator, view, images, secrets_dir, shim_factory, run_log) -> None:
    """The BMC accepts power-on (204) but the host never comes up: a deadline, then cleanup."""
    sid = SYSTEMS["dead"].uuid
    shim = shim_factory(ShimRules(swallow_power_on=True))
    host = make_host("dead", shim.url, secrets_dir)
    started = time.monotonic()
    result = run_to_completion(provider_for(host, options(images, power_on_timeout=2)), host, interval=0.1)
    assert time.monotonic() - started < 15

    assert_one_line_failure(result, "deadline")
    assert result.message == (
        f"{host.name}: BMC accepted power-on but system /redfish/v1/Systems/{sid} did not report "
        "PowerState On within 2s (last PowerState Off)"
    )
    assert result.error().exit_code == EXIT_FAILED
    assert shim.requests_to("POST", r"/Actions/ComputerSystem.Reset$") == [{"ResetType": "On"}]
    # irkit undid what it had set: media ejected, override cleared; power untouched.
    assert result.facts["cleanup"]["eject"] == "ok"
    assert "enabled=" in result.facts["cleanup"]["boot_override"]
    assert view.power(sid) == "Off"
    assert view.media(sid)["Inserted"] is False
    assert view.boot(sid)["BootSourceOverrideTarget"] == "Hdd"
    assert_no_secret(json.dumps(result.to_record()), run_log.read_text())


def test_wrong_credentials(emulator, view, images, secrets_dir, run_log) -> None:
    sid = SYSTEMS["auth"].uuid
    host = make_host("auth", emulator.url, secrets_dir, password_file="wrong")
    result = run_to_completion(provider_for(host, options(images)), host, interval=0.1)
    assert_one_line_failure(result, "auth")
    assert result.message == (
        f"{host.name}: BMC {emulator.url} rejected the credentials of user '{USER}' (HTTP 401) "
        "while listing systems"
    )
    assert result.phase == "connect" and "cleanup" not in result.facts
    assert view.media(sid)["Inserted"] is False and view.power(sid) == "Off"
    assert_no_secret(json.dumps(result.to_record()), run_log.read_text(), result.message)


def test_missing_virtual_media_link_answers_404(emulator, view, images, secrets_dir, shim_factory) -> None:
    sid = SYSTEMS["nomedia"].uuid
    shim = shim_factory(ShimRules(hide=[rf"^/redfish/v1/Systems/{sid}/VirtualMedia"]))
    host = make_host("nomedia", shim.url, secrets_dir)
    boot_before = view.boot(sid)
    result = run_to_completion(provider_for(host, options(images)), host, interval=0.1)
    assert_one_line_failure(result, "no_virtual_media")
    assert f"system /redfish/v1/Systems/{sid} has no CD/DVD virtual media device" in result.message
    assert f"/redfish/v1/Systems/{sid}/VirtualMedia" in result.message  # what was looked at
    # Nothing was changed on the BMC.
    assert view.boot(sid) == boot_before and view.power(sid) == "Off"
    assert "cleanup" not in result.facts


@pytest.fixture(scope="module")
def minimal_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SushyEmulator]:
    emu = SushyEmulator(tmp_path_factory.mktemp("sushy-min"), [FakeSystem("vandelay-erp01")],
                        users={USER: PASSWORD}, feature_set="minimum")
    emu.start()
    yield emu
    emu.stop()


def test_missing_virtual_media_minimum_feature_set(minimal_emulator, images, secrets_dir) -> None:
    """``--feature-set minimum``: no VirtualMedia link and no Managers at all."""
    system = minimal_emulator.systems[0]
    bmc = Bmc(url=minimal_emulator.url, username=USER, password=f"file:{secrets_dir / 'good'}",
              allow_insecure_http=True)
    host = Tenant(name="vandelay", hosts=[Host(name="vandelay-erp01", address="198.18.4.10", bmc=bmc)]).hosts[0]
    result = run_to_completion(provider_for(host, options(images)), host, interval=0.1)
    assert_one_line_failure(result, "no_virtual_media")
    assert "no VirtualMedia link on the system or its managers" in result.message
    # The only system was picked without bmc.system_id.
    assert result.facts["system"] == f"/redfish/v1/Systems/{system.uuid}"


def test_unreachable_bmc_and_config_errors(images, secrets_dir, tmp_path) -> None:
    from sushy_fixture import free_port

    url = f"http://127.0.0.1:{free_port()}"
    host = make_host("auth", url, secrets_dir)
    result = run_to_completion(provider_for(host, options(images)), host, interval=0.1)
    assert_one_line_failure(result, "unreachable")
    assert f"cannot reach BMC {url} while logging in: connection refused" in result.message

    # An unresolvable secret reference: an input error (exit 2), before any network traffic.
    bmc = Bmc(url=url, username=USER, password=f"file:{tmp_path / 'missing'}", allow_insecure_http=True)
    host2 = Tenant(name="globex", hosts=[Host(name="h1", address="198.18.1.9", bmc=bmc)]).hosts[0]
    result = run_to_completion(provider_for(host2, options(images)), host2, interval=0.1)
    assert_one_line_failure(result, "config")
    assert result.error().exit_code == 2 and "cannot read" in result.message

    # Virtual media without an image URL is refused up front.
    result = run_to_completion(provider_for(host, options(images, image_url=None)), host, interval=0.1)
    assert_one_line_failure(result, "config")
    assert "no install image URL" in result.message


def test_tls_self_signed_bmc(tmp_path_factory, secrets_dir) -> None:
    """A BMC with its factory self-signed certificate: refused unless verify_tls is false."""
    system = FakeSystem("umbrella-ehr01", power_state="On")
    with SushyEmulator(tmp_path_factory.mktemp("sushy-tls"), [system], users={USER: PASSWORD}, tls=True) as emu:
        assert emu.url.startswith("https://")
        secure = Bmc(url=emu.url, username=USER, password=f"file:{secrets_dir / 'good'}", verify_tls=True)
        client = RedfishClient.from_bmc(secure, timeouts=FAST)
        with pytest.raises(BmcError) as exc:
            client.connect()
        assert exc.value.kind == "tls" and "\n" not in str(exc.value)
        assert str(exc.value).startswith(f"BMC {emu.url}: TLS verification failed while logging in")

        insecure = secure.model_copy(update={"verify_tls": False})
        with RedfishClient.from_bmc(insecure, timeouts=FAST) as client:
            assert client.power_state(client.find_system()) == "On"
