# kiro_fast container image, in two stages.
#
#   build    python:3.11-slim + a C compiler: builds the wheel (Cython event-stream decoder
#            compiled in), installs it into the virtualenv /opt/kiro-fast and proves, from
#            outside the source tree, that the compiled decoder is the one that loads.
#   runtime  python:3.11-slim with that virtualenv copied in: no compiler, no sources, a
#            non-root user, /data as the volume for config, credentials and state.
#
#   docker build -t kiro-fast .
#   docker run -p 8080:8080 -v kiro-fast-data:/data -e KIRO_FAST_API_KEY=sk-… kiro-fast
#
# Configuration: environment variables (KIRO_FAST_*), or /data/config.json and
# /data/credentials.json, which are read when present (/data is the working directory).
# See docs/deploy.md; deploy/docker-compose.yml adds Redis.
#
# Keep every RUN of the build stage one plain shell command (no heredocs, no BuildKit
# mounts): tests/test_dockerfile.py replays them in a virtualenv, since Docker cannot run
# where the tests run.

FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN python -m venv /opt/kiro-fast
RUN /opt/kiro-fast/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /src/dist .
RUN /opt/kiro-fast/bin/pip install --no-cache-dir "$(ls /src/dist/kiro_fast-*.whl)[redis,metrics]"
RUN cd / && /opt/kiro-fast/bin/python -c "import kiro_fast.eventstream as e; assert e.IMPLEMENTATION == 'c', e.IMPLEMENTATION"

FROM python:3.11-slim AS runtime
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin kiro && mkdir -p /data && chown kiro:kiro /data
COPY --from=build /opt/kiro-fast /opt/kiro-fast
ENV PATH="/opt/kiro-fast/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    KIRO_FAST_HOST=0.0.0.0 \
    KIRO_FAST_PORT=8080
WORKDIR /data
VOLUME ["/data"]
USER kiro
EXPOSE 8080
# slim has no curl: ask /health with the interpreter that is there anyway.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('KIRO_FAST_PORT', '8080'), timeout=4)"]
ENTRYPOINT ["kiro-fast"]
CMD ["serve"]
