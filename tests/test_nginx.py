"""The documented nginx site (deploy/nginx/kiro_fast.conf) with a real nginx in front.

nginx runs from a temporary prefix (``daemon off``, loopback only, stopped by its PID);
kiro_fast and the fake upstream run in this process (the end-to-end harness). A stream
through nginx must arrive event by event: its first text delta is read while the fake
upstream still holds back the rest. The forwarded client address reaches kiro_fast's
access log only when nginx's address is in ``trustedProxies``.

Skipped when nginx is not installed, unless ``KIRO_FAST_REQUIRE_ALL=1``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from e2e_harness import API_KEY, Harness
from proc_harness import SSEReader, messages_body, request, text_of, wait_until

from kiro_fast import forwarded

SITE = Path(__file__).resolve().parent.parent / "deploy" / "nginx" / "kiro_fast.conf"
TEXT = "Streamed through nginx one event at a time, never held back in a buffer."
#: The test client connects to nginx from this loopback address, nginx to kiro_fast from
#: 127.0.0.1: the two are told apart in the access log.
CLIENT_ADDRESS = "127.0.0.2"
SPOOFED = "198.51.100.7"


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


NGINX = nginx_binary()
if NGINX is None:
    if os.environ.get("KIRO_FAST_REQUIRE_ALL") == "1":
        raise RuntimeError("nginx is required (KIRO_FAST_REQUIRE_ALL=1) but not installed")
    pytest.skip("nginx is not installed", allow_module_level=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render_site(upstream_port: int, listen_port: int) -> str:
    """The shipped site with test addresses: one loopback listener, our kiro_fast."""
    text = SITE.read_text()
    text, servers = re.subn(
        r"^(\s*)server 127\.0\.0\.1:8080;",
        rf"\1server 127.0.0.1:{upstream_port};",
        text,
        flags=re.M,
    )
    assert servers == 1, "the site must have one upstream server line"
    text = re.sub(r"^\s*listen \[::\]:80;\n", "", text, flags=re.M)
    text, listens = re.subn(
        r"^(\s*)listen 80;", rf"\1listen 127.0.0.1:{listen_port};", text, flags=re.M
    )
    assert listens == 1
    return text


class Nginx:
    """nginx on a temporary prefix, in the foreground, stopped by PID."""

    def __init__(self, prefix: Path, upstream_port: int) -> None:
        assert NGINX is not None
        self.port = free_port()
        self.prefix = prefix
        (prefix / "logs").mkdir(parents=True)
        (prefix / "site.conf").write_text(render_site(upstream_port, self.port))
        temp = "\n".join(
            f"    {name}_temp_path {prefix}/{name}_temp;"
            for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        user = "user root root;\n" if os.geteuid() == 0 else ""
        (prefix / "nginx.conf").write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\n"
            f"error_log {prefix}/logs/error.log info;\n"
            "events { worker_connections 64; }\n"
            f"http {{\n    access_log {prefix}/logs/access.log;\n{temp}\n"
            f"    include {prefix}/site.conf;\n}}\n"
        )
        check = subprocess.run(
            [NGINX, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", "stderr"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", "stderr"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_until(self._listening, 15, "nginx listens")

    def _listening(self) -> bool:
        if self.proc.poll() is not None:
            assert self.proc.stderr is not None
            raise AssertionError(f"nginx exited: {self.proc.stderr.read().decode()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish, then exit
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def start(tmp_path: Path, trusted: list[str]) -> tuple[Harness, Nginx]:
    harness = Harness(config={"trustedProxies": trusted}).start()
    try:
        return harness, Nginx(tmp_path / "nginx", harness.runtime.port)
    except BaseException:
        stop(harness)
        raise


def stop(harness: Harness, nginx: Nginx | None = None) -> None:
    try:
        if nginx is not None:
            nginx.stop()
        harness.stop()
    finally:
        forwarded.configure(())  # the runtime set the process-wide list; leave it empty


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Harness, Nginx]]:
    harness, nginx = start(tmp_path, ["127.0.0.1"])
    yield harness, nginx
    stop(harness, nginx)


def headers() -> dict[str, str]:
    # The SDKs (httpx) offer gzip; a proxy that compressed the stream would hold it back.
    return {"x-api-key": API_KEY, "content-type": "application/json", "accept-encoding": "gzip"}


def test_the_site_passes_nginx_t_as_shipped(tmp_path: Path) -> None:
    assert NGINX is not None
    site = SITE.read_text()
    for directive in (
        "proxy_buffering off;",
        "proxy_request_buffering off;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "client_max_body_size 32m;",
    ):
        assert directive in site
    timeouts = dict(re.findall(r"(proxy_read_timeout|proxy_send_timeout) (\d+)s;", site))
    assert int(timeouts["proxy_read_timeout"]) >= 900
    assert int(timeouts["proxy_send_timeout"]) >= 900
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"pid {tmp_path}/n.pid;\nevents {{}}\nhttp {{\n    include {SITE};\n}}\n")
    check = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stderr


def test_a_stream_arrives_event_by_event_through_nginx(stack: tuple[Harness, Nginx]) -> None:
    harness, nginx = stack
    directive = orjson.dumps({"scenario": "stall", "after": 2, "text": TEXT}).decode()
    body = messages_body(f"go [[fake:{directive}]]", stream=True)
    stream = SSEReader(nginx.port, "/v1/messages", body, headers())
    try:
        assert stream.status == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert "content-length" not in stream.headers
        assert "content-encoding" not in stream.headers  # compressing means buffering
        first = stream.until("content_block_delta")
        # The first delta is here while the fake still holds the rest of the answer:
        # nothing between the upstream and this client buffered the stream.
        assert harness.call(lambda: harness.fake.stalled) == 1
        assert text_of(first) and TEXT.startswith(text_of(first)) and text_of(first) != TEXT
        assert harness.call(harness.fake.release) == 1
        rest = stream.until("message_stop")
    finally:
        stream.close()
    assert text_of(first + rest) == TEXT


def test_requests_and_errors_pass_through(stack: tuple[Harness, Nginx]) -> None:
    _, nginx = stack
    status, _, body = request(nginx.port, "POST", "/v1/messages", messages_body("hi"), headers())
    assert status == 200 and orjson.loads(body)["type"] == "message"
    status, _, body = request(
        nginx.port, "POST", "/v1/messages", messages_body("hi"), {"x-api-key": "wrong"}
    )
    assert status == 401 and orjson.loads(body)["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("trusted", "expected"),
    [(["127.0.0.1"], CLIENT_ADDRESS), ([], "127.0.0.1"), (["10.0.0.0/8"], "127.0.0.1")],
    ids=["nginx-trusted", "nobody-trusted", "other-proxy-trusted"],
)
def test_the_forwarded_address_is_logged_only_from_a_trusted_proxy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, trusted: list[str], expected: str
) -> None:
    harness, nginx = start(tmp_path, trusted)
    try:
        with caplog.at_level(logging.INFO, logger="kiro_fast.access"):
            status, response_headers, _ = request(
                nginx.port,
                "GET",
                "/health",
                headers={"X-Forwarded-For": SPOOFED},
                source=CLIENT_ADDRESS,
            )
            assert status == 200
            request_id = response_headers["x-request-id"]

            def logged() -> list[logging.LogRecord]:
                return [
                    r
                    for r in caplog.records
                    if r.name == "kiro_fast.access" and getattr(r, "request_id", "") == request_id
                ]

            wait_until(lambda: bool(logged()), 10, "the access line")
    finally:
        stop(harness, nginx)
    (record,) = logged()
    message = record.getMessage()
    assert message.startswith(f'{expected} "GET /health" 200')
    assert record.client == expected  # type: ignore[attr-defined]
    assert SPOOFED not in message  # what the client claimed is never believed
