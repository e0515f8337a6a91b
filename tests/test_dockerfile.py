"""The Dockerfile, checked where Docker cannot run.

* The build stage's RUN steps are replayed in a throwaway virtualenv: the build context is
  copied as ``.dockerignore`` filters it, ``/src`` and ``/opt/kiro-fast`` become temporary
  directories, ``python`` is this interpreter, the ``apt-get`` step is replaced by
  requiring a C compiler here, and ``--no-cache-dir`` is dropped so pip's cache keeps the
  test fast. The steps must build the wheel with the compiled decoder and pass their own
  ``IMPLEMENTATION == 'c'`` assertion from outside the source tree.
* The installed ``kiro-fast`` then serves, and the image's HEALTHCHECK command, run as
  written, must report it healthy.
* The runtime stage's invariants are read from the file: slim base, non-root user set
  after the last RUN/COPY, HEALTHCHECK without curl, the /data volume, only the virtualenv
  copied from the build stage, no build tools.
* ``.dockerignore`` keeps configuration, credentials, state and build products out of
  the context.

The emulation follows the Dockerfile only as far as its RUN steps stay plain shell
commands; the Dockerfile says so.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from proc_harness import wait_until

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
VENV = "/opt/kiro-fast"
WORKDIR = "/src"


@dataclass
class Stage:
    base: str
    name: str
    steps: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.steps if kw == keyword]


def parse_dockerfile(text: str) -> dict[str, Stage]:
    """Stages by name; each step is (KEYWORD, arguments) with continuations joined."""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    logical = re.sub(r"\\\n\s*", " ", text)
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            current = stages[name.strip()] = Stage(base.strip(), name.strip())
        else:
            assert current is not None, f"{keyword} before FROM"
            current.steps.append((keyword, args))
    return stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


# --------------------------------------------------------------------------- .dockerignore


def ignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's matching for the patterns we use: anchored at the root, ``**/`` anywhere,
    and a matched directory excludes everything below it."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        alternatives = [pattern] + ([pattern[3:]] if pattern.startswith("**/") else [])
        for candidate in alternatives:
            for prefix in prefixes:
                if fnmatch.fnmatchcase(prefix, candidate) and (
                    "/" in candidate or "/" not in prefix or candidate.startswith("**")
                ):
                    return True
    return False


def copy_context(source: Path, target: Path) -> None:
    """``COPY . .``: the build context as .dockerignore leaves it."""
    patterns = ignore_patterns()
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source).as_posix()
        if ignored(relative, patterns) or path.is_dir():
            continue
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)


def test_dockerignore_keeps_secrets_state_and_build_products_out(tmp_path: Path) -> None:
    tree = {
        "config.json": "{}",
        "credentials.json": "[]",
        "data/kiro_fast.db": "",
        "kiro_fast/state.db-wal": "",
        ".venv/bin/python": "",
        ".git/HEAD": "",
        "build/lib/x.py": "",
        "dist/kiro_fast-0.1.0.whl": "",
        "kiro_fast.egg-info/PKG-INFO": "",
        "kiro_fast/_eventstream.cpython-311-x86_64-linux-gnu.so": "",
        "kiro_fast/_eventstream.c": "",
        "kiro_fast/__pycache__/app.cpython-311.pyc": "",
        "kiro_fast/testing/__pycache__/x.pyc": "",
        "tests/test_x.py": "",
        "pyproject.toml": "",
        "setup.py": "",
        "README.md": "",
        "kiro_fast/__init__.py": "",
        "kiro_fast/_eventstream.pyx": "",
        "kiro_fast/_eventstream.pyi": "",
        "kiro_fast/py.typed": "",
        "kiro_fast/testing/server.py": "",
    }
    source = tmp_path / "ctx"
    for name, content in tree.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(content)
    copied_dir = tmp_path / "copy"
    copy_context(source, copied_dir)
    copied = {p.relative_to(copied_dir).as_posix() for p in copied_dir.rglob("*") if p.is_file()}
    assert copied == {
        "pyproject.toml",
        "setup.py",
        "README.md",
        "kiro_fast/__init__.py",
        "kiro_fast/_eventstream.pyx",
        "kiro_fast/_eventstream.pyi",
        "kiro_fast/py.typed",
        "kiro_fast/testing/server.py",
    }


# --------------------------------------------------------------------------- runtime stage


def test_runtime_stage_is_slim_non_root_and_healthchecked(stages: dict[str, Stage]) -> None:
    assert list(stages) == ["build", "runtime"]
    build, runtime = stages["build"], stages["runtime"]
    assert build.base == runtime.base == "python:3.11-slim"

    keywords = [kw for kw, _ in runtime.steps]
    users = runtime.all("USER")
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith(("root:", "0:"))
    last_user = len(keywords) - 1 - keywords[::-1].index("USER")
    assert all(kw not in ("RUN", "COPY", "ADD") for kw in keywords[last_user:])

    (healthcheck,) = runtime.all("HEALTHCHECK")
    assert "/health" in healthcheck and "urllib" in healthcheck
    assert not re.search(r"\b(curl|wget)\b", healthcheck)
    assert runtime.all("VOLUME") in (['["/data"]'], ["/data"])
    assert runtime.all("EXPOSE") == ["8080"]
    assert runtime.all("ENTRYPOINT") == ['["kiro-fast"]']
    assert runtime.all("WORKDIR") == ["/data"]

    # Only the virtualenv comes from the build stage: no sources, no compiler.
    copies = runtime.all("COPY")
    assert copies == [f"--from=build {VENV} {VENV}"]
    for command in runtime.all("RUN"):
        assert not re.search(r"build-essential|\bgcc\b|\bmake\b|pip (install|wheel)", command)
    env = " ".join(runtime.all("ENV"))
    assert f"{VENV}/bin" in env and "KIRO_FAST_HOST=0.0.0.0" in env


def test_build_stage_proves_the_compiled_decoder(stages: dict[str, Stage]) -> None:
    runs = stages["build"].all("RUN")
    assert any("build-essential" in run for run in runs)
    assert runs[-1].startswith("cd / && ") and "IMPLEMENTATION == 'c'" in runs[-1]
    assert stages["build"].all("WORKDIR") == [WORKDIR]
    assert stages["build"].all("COPY") == [". ."]


def test_compose_runs_kiro_fast_with_redis_state() -> None:
    from kiro_fast.config import Config  # noqa: PLC0415

    text = COMPOSE.read_text()
    state_env = next(
        f.metadata["env"] for f in Config.__dataclass_fields__.values() if f.name == "state_url"
    )
    match = re.search(r"^\s+(\w+): redis://redis:6379/\d+\s*$", text, re.M)
    assert match and match.group(1) in state_env, (
        "the state URL variable must be one kiro_fast reads"
    )
    assert re.search(r"^  redis:\s*$", text, re.M) and re.search(r"^  kiro-fast:\s*$", text, re.M)
    assert re.search(r"^\s+- kiro-fast-data:/data\s*$", text, re.M)
    assert re.search(r"^\s+dockerfile: Dockerfile\s*$", text, re.M)
    assert re.search(r"^\s+context: \.\.\s*$", text, re.M)
    assert "KIRO_FAST_API_KEY" in text


# --------------------------------------------------------------------------- build replay


def replay_command(command: str, src: Path, venv: Path) -> str:
    command = command.replace(VENV, str(venv)).replace(f"{WORKDIR}/", f"{src}/")
    command = command.replace("--no-cache-dir ", "")
    return re.sub(r"^python ", f"{sys.executable} ", command)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_build_stage_replayed_in_a_virtualenv(stages: dict[str, Stage], tmp_path: Path) -> None:
    if not (shutil.which("cc") or shutil.which("gcc")):
        if os.environ.get("KIRO_FAST_REQUIRE_ALL") == "1":
            pytest.fail("a C compiler is required (KIRO_FAST_REQUIRE_ALL=1)")
        pytest.skip("no C compiler (the image installs build-essential)")
    src, venv = tmp_path / "src", tmp_path / "opt-kiro-fast"
    copy_context(ROOT, src)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV", "KIRO_FAST_NO_EXT"))
    }
    for command in stages["build"].all("RUN"):
        if command.startswith("apt-get "):
            continue  # system packages: the compiler checked above stands in for them
        replayed = replay_command(command, src, venv)
        done = subprocess.run(
            ["bash", "-c", replayed], cwd=src, env=env, capture_output=True, text=True, timeout=240
        )
        assert done.returncode == 0, f"{replayed}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"

    (wheel,) = (src / "dist").glob("kiro_fast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(re.fullmatch(r"kiro_fast/_eventstream\.cpython-.*\.so", n) for n in names)
    version = subprocess.run(
        [str(venv / "bin" / "kiro-fast"), "--version"], capture_output=True, text=True, env=env
    )
    assert version.returncode == 0 and version.stdout.startswith("kiro-fast ")
    check_healthcheck(stages["runtime"], venv, tmp_path, env)


def check_healthcheck(runtime: Stage, venv: Path, tmp_path: Path, env: dict[str, str]) -> None:
    """The installed server starts as the image starts it, and HEALTHCHECK says healthy."""
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    serve_env = {
        **env,
        "KIRO_FAST_API_KEY": "sk-docker-test",
        "KIRO_FAST_HOST": "127.0.0.1",
        "KIRO_FAST_PORT": str(port),
        "PATH": f"{venv}/bin:{env.get('PATH', '')}",
    }
    entrypoint = json.loads(runtime.all("ENTRYPOINT")[0]) + json.loads(runtime.all("CMD")[0])
    server = subprocess.Popen(
        entrypoint, cwd=data, env=serve_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_until(lambda: _listening(port, server), 30, "the installed kiro-fast listens")
        healthcheck = runtime.all("HEALTHCHECK")[0]
        probe = json.loads(healthcheck[healthcheck.index("CMD ") + 4 :])
        done = subprocess.run(probe, env=serve_env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        assert server.stderr is not None
        server.stderr.close()
    assert server.returncode == 0


def _listening(port: int, server: subprocess.Popen[bytes]) -> bool:
    if server.poll() is not None:
        assert server.stderr is not None
        raise AssertionError(f"kiro-fast exited: {server.stderr.read().decode()[-3000:]}")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True
