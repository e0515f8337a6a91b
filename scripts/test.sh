#!/usr/bin/env bash
# Set up everything the test suite needs (virtualenv with the built extension, Redis,
# nginx, Chromium, the Claude Code CLI) and run it. Arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
kf_system_packages
kf_venv "test"
kf_claude_cli
cd "$KF_ROOT"
# The pytest entry point (not `python -m pytest`) keeps the source tree off sys.path,
# so the tests exercise the installed package with its compiled extension.
exec "$KF_VENV/bin/pytest" "$@"
