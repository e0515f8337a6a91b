"""The credential record: the kiro.rs entry both ways, field errors, machine ids, regions,
and the atomic write a ``kill -9`` cannot break.

Expected values come from the spec (kiro-auth.md §2.2 fields and aliases, §6 and
Appendix B test vectors, §2.7 client ids), written here by hand.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kiro_fast.credentials import (
    Credential,
    FieldError,
    atomic_write,
    client_region,
    credential_from_entry,
    credential_to_entry,
    derive_machine_id,
    normalise_machine_id,
)
from kiro_fast.sources import KiroRsFile

REPO = Path(__file__).resolve().parent.parent
REFRESH = "aor" + "A" * 120
#: 2026-05-01T10:00:00Z
T = datetime(2026, 5, 1, 10, 0, tzinfo=UTC).timestamp()


def entry(**fields: Any) -> dict[str, Any]:
    return {"refreshToken": REFRESH, **fields}


# --------------------------------------------------------------------------- fields


def test_every_kiro_rs_field_is_read() -> None:
    cred = credential_from_entry(
        {
            "id": 4,
            "refreshToken": REFRESH,
            "accessToken": "aoaTOKEN",
            "profileArn": "arn:aws:codewhisperer:us-east-1:1:profile/X",
            "expiresAt": "2026-05-01T10:00:00Z",
            "authMethod": "idc",
            "clientId": "cid",
            "clientSecret": "csecret",
            "priority": 2,
            "region": "us-east-2",
            "authRegion": "eu-west-1",
            "apiRegion": "eu-central-1",
            "machineId": "a" * 64,
            "email": "me@example.com",
            "subscriptionTitle": "KIRO PRO",
            "proxyUrl": "socks5://10.0.0.5:1080",
            "proxyUsername": "u",
            "proxyPassword": "p",
            "disabled": True,
            "endpoint": "ide",
        },
        default_id=0,
    )
    assert (cred.id, cred.priority, cred.auth_method) == (4, 2, "idc")
    regions = (cred.region, cred.auth_region, cred.api_region)
    assert regions == ("us-east-2", "eu-west-1", "eu-central-1")
    assert cred.expires_at == T
    assert cred.machine_id == "a" * 64
    assert (cred.proxy_url, cred.proxy_username, cred.proxy_password) == (
        "socks5://10.0.0.5:1080",
        "u",
        "p",
    )
    assert cred.disabled and cred.disabled_reason == "Manual"  # kiro.rs's reason on load


@pytest.mark.parametrize(
    ("written", "method"),
    [
        ("social", "social"),
        ("Social", "social"),
        ("idc", "idc"),
        ("IdC", "idc"),
        ("builder-id", "idc"),
        ("iam", "idc"),
        ("BuilderId", "idc"),
        ("api_key", "api_key"),
        ("apikey", "api_key"),
    ],
)
def test_auth_method_aliases(written: str, method: str) -> None:
    fields = entry(authMethod=written, clientId="c", clientSecret="s", kiroApiKey="ksk_x")
    assert credential_from_entry(fields, 1).auth_method == method


@pytest.mark.parametrize(
    ("fields", "method"),
    [
        ({"clientId": "c", "clientSecret": "s"}, "idc"),
        ({"clientId": "c"}, "social"),
        ({}, "social"),
        ({"kiroApiKey": "ksk_abc"}, "api_key"),
    ],
)
def test_auth_method_is_detected_when_absent(fields: dict[str, Any], method: str) -> None:
    assert credential_from_entry(entry(**fields), 1).auth_method == method


@pytest.mark.parametrize(
    ("written", "form"),
    [
        ("2026-05-01T10:00:00Z", "rfc3339"),
        ("2026-05-01T12:00:00+02:00", "rfc3339"),
        ("2026-05-01T10:00:00.000000000+00:00", "rfc3339"),  # kiro.rs writes nanoseconds
        (int(T), "seconds"),
        (int(T) * 1000, "milliseconds"),
        (str(int(T)), "seconds"),
    ],
)
def test_expires_at_in_all_three_forms(written: Any, form: str) -> None:
    cred = credential_from_entry(entry(expiresAt=written), 1)
    assert cred.expires_at == T
    assert cred.expires_form == form


@pytest.mark.parametrize(
    ("written", "back"),
    [
        (int(T), int(T)),
        (int(T) * 1000, int(T) * 1000),
        ("2026-05-01T10:00:00Z", "2026-05-01T10:00:00.000Z"),
    ],
)
def test_expires_at_is_written_back_in_its_own_form(written: Any, back: Any) -> None:
    cred = credential_from_entry(entry(expiresAt=written), 1)
    assert credential_to_entry(cred)["expiresAt"] == back


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"refreshToken": None}, "refreshToken"),
        ({"authMethod": "idc", "clientId": "c"}, "clientSecret"),
        ({"authMethod": "idc"}, "clientId"),
        ({"authMethod": "api_key"}, "kiroApiKey"),
        ({"authMethod": "password"}, "authMethod"),
        ({"expiresAt": "next tuesday"}, "expiresAt"),
        ({"expiresAt": True}, "expiresAt"),
        ({"priority": "high"}, "priority"),
        ({"id": -1}, "id"),
        ({"disabled": "yes"}, "disabled"),
        ({"region": 5}, "region"),
        ({"refreshToken": "aorAAAA...BBBB"}, "refreshToken"),
    ],
)
def test_a_bad_field_is_named(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(FieldError) as info:
        credential_from_entry(entry(**fields), 1)
    assert info.value.field == field
    assert str(info.value).startswith(field + ":")


def test_unknown_keys_survive_a_round_trip() -> None:
    raw = entry(id=2, note="work laptop", tags=["a"], priority=0)
    back = credential_to_entry(credential_from_entry(raw, 0))
    assert back["note"] == "work laptop" and back["tags"] == ["a"]
    assert "priority" not in back  # 0 is omitted, as kiro.rs does


def test_disable_reason_and_time_are_written() -> None:
    cred = credential_from_entry(entry(id=1), 0)
    cred.disable("InvalidRefreshToken", now=T)
    back = credential_to_entry(cred)
    assert back["disabled"] is True
    assert back["disabledReason"] == "InvalidRefreshToken"
    assert back["disabledAt"] == "2026-05-01T10:00:00.000Z"
    again = credential_from_entry(back, 0)
    assert (again.disabled_reason, again.disabled_at) == ("InvalidRefreshToken", T)


# --------------------------------------------------------------------------- regions


def test_client_region_reads_the_spec_vector() -> None:
    assert client_region("oMp7qfW2oH1OgDwZNKJHdnVzLWVhc3QtMQ") == "us-east-1"


@pytest.mark.parametrize("value", [None, "", "not base64 !", "c2hvcnQ", "https://oidc/clients/x"])
def test_client_region_is_none_for_other_client_ids(value: str | None) -> None:
    assert client_region(value) is None


def test_refresh_region_precedence() -> None:
    cid = "oMp7qfW2oH1OgDwZNKJHdnVzLWVhc3QtMQ"
    base = {"id": 1, "auth_method": "idc", "client_id": cid, "client_secret": "s"}
    assert Credential(**base, auth_region="a-b-1", region="c-d-2").auth_region_for("x") == "a-b-1"
    assert Credential(**base, region="c-d-2").auth_region_for("x") == "c-d-2"
    assert Credential(**base).auth_region_for("x") == "us-east-1"  # the registration's
    assert Credential(id=1, auth_method="social").auth_region_for("x") == "x"
    assert Credential(id=1, auth_method="social", region="r-s-1").api_region_for("x") == "x"


# --------------------------------------------------------------------------- machine id


def test_machine_id_vectors() -> None:
    assert derive_machine_id(Credential(1, "social", refresh_token="test_refresh_token")) == (
        "d8f9e744094de07e7773b722f04e18417ab6ea08442df337812cd632e1c92e40"
    )
    assert derive_machine_id(Credential(1, "api_key", kiro_api_key="ksk_test_api_key")) == (
        "d3f3c2cd67d9c65674969954ec20d69fdf023a2c9c2a61246285cb08ba999872"
    )
    assert normalise_machine_id("2582956e-cc88-4669-b546-07adbffcb894") == (
        "2582956ecc884669b54607adbffcb8942582956ecc884669b54607adbffcb894"
    )
    assert normalise_machine_id("not-an-id") is None


def test_machine_id_precedence() -> None:
    own = "b" * 64
    cred = Credential(1, "social", refresh_token="t", machine_id=own)
    assert derive_machine_id(cred, "c" * 64) == own
    assert derive_machine_id(Credential(1, "social", refresh_token="t"), "C" * 64) == "c" * 64


# --------------------------------------------------------------------------- atomic write


def test_atomic_write_replaces_the_file_and_keeps_it_private(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    path.write_text("old")
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert (path.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["credentials.json"]


WRITER = r"""
import sys
from pathlib import Path
from kiro_fast.sources import KiroRsFile

source = KiroRsFile(Path(sys.argv[1]))
cred = source.load().credentials[0]
padding = "y" * 400_000  # a write big enough to be caught in the middle
n = 0
while True:
    n += 1
    cred.refresh_token = "aorGEN%08d" % n + padding
    source.update([cred])
    sys.stdout.write("%d\n" % n)
    sys.stdout.flush()
"""


@pytest.mark.parametrize("writes_before_kill", [1, 3, 7, 12, 20])
def test_kill_9_during_write_back_leaves_a_valid_file(
    tmp_path: Path, writes_before_kill: int
) -> None:
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps([{"id": 1, "refreshToken": "aorGEN00000000", "note": "kept"}]))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert child.stdout is not None
        done = 0
        while done < writes_before_kill:
            line = child.stdout.readline()
            assert line, "the writer died on its own"
            done = int(line)
        os.kill(child.pid, signal.SIGKILL)  # lands somewhere in the next write
    finally:
        child.kill()
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    saved = json.loads(path.read_text())  # never half a file
    assert isinstance(saved, list) and len(saved) == 1
    generation = int(saved[0]["refreshToken"][6:14])
    assert generation in (done, done + 1)  # the last finished write, or the one killed
    assert saved[0]["note"] == "kept"


STALLED_WRITER = r"""
import os
import sys
import time
from pathlib import Path
from kiro_fast.sources import KiroRsFile

source = KiroRsFile(Path(sys.argv[1]))
cred = source.load().credentials[0]
real_fsync = os.fsync


def fsync_then_stall(fd):
    real_fsync(fd)
    sys.stdout.write("temp file written\n")
    sys.stdout.flush()
    time.sleep(60)  # the parent kills us here: new data on disk, not yet renamed


os.fsync = fsync_then_stall
cred.refresh_token = "aorNEW" + "z" * 200
source.update([cred])
"""


def test_kill_9_between_writing_and_renaming_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    original = [{"id": 1, "refreshToken": "aorOLD" + "o" * 200}]
    path.write_text(json.dumps(original))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", STALLED_WRITER, str(path)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "temp file written\n"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    assert json.loads(path.read_text()) == original
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1  # the killed write's temp file, never the target
    KiroRsFile(path).load()  # the next start clears it (it may hold a secret)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
