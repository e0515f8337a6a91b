#!/usr/bin/env bash
# Set up kiro_fast in a virtualenv and run it. With no config.json / credentials.json it
# starts the demo against the built-in fake Kiro upstream. Arguments go to kiro-fast.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
kf_venv ""
cd "$KF_ROOT"
exec "$KF_VENV/bin/kiro-fast" "$@"
