# Shared steps of scripts/run.sh and scripts/test.sh (sourced, not run).
# Everything is idempotent: a second run reuses what the first one set up.

KF_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KF_VENV="${KIRO_FAST_VENV:-$KF_ROOT/.venv}"
KF_CACHE="${KIRO_FAST_CACHE:-$KF_ROOT/.cache}"

kf_log() { printf '\033[1m[kiro-fast]\033[0m %s\n' "$*" >&2; }

kf_python() {
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return
    fi
  done
  kf_log "Python >= 3.11 is required"
  exit 1
}

# kf_venv EXTRAS: create the virtualenv and install kiro_fast (building the extension).
kf_venv() {
  local extras="$1"
  if [[ ! -x "$KF_VENV/bin/python" ]]; then
    kf_log "creating virtualenv $KF_VENV"
    "$(kf_python)" -m venv "$KF_VENV"
  fi
  "$KF_VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  kf_log "installing kiro_fast${extras:+[$extras]} (builds the Cython decoder)"
  "$KF_VENV/bin/python" -m pip install -q "$KF_ROOT${extras:+[$extras]}"
}

# System packages the integration tests use: real Redis, nginx, Chromium, wrk.
kf_system_packages() {
  local wanted=(redis-server nginx chromium chromium-driver wrk)
  local missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
  command -v chromium >/dev/null 2>&1 || missing+=(chromium chromium-driver)
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  ((${#missing[@]})) || return 0
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    kf_log "not installing ${missing[*]} (needs root and apt-get); tests that need them will skip"
    return 0
  fi
  kf_log "installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
    apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  }
  : "${wanted[@]}"
}

# The Claude Code CLI, for the end-to-end test that runs it against kiro_fast.
kf_claude_cli() {
  local dir="$KF_CACHE/claude-code"
  if [[ -x "$dir/node_modules/.bin/claude" ]]; then
    export KIRO_FAST_CLAUDE_BIN="$dir/node_modules/.bin/claude"
    return 0
  fi
  if ! command -v npm >/dev/null 2>&1; then
    kf_log "npm not found: the Claude Code end-to-end test will skip"
    return 0
  fi
  kf_log "installing the Claude Code CLI into $dir"
  mkdir -p "$dir"
  if npm install --prefix "$dir" --no-audit --no-fund --loglevel=error @anthropic-ai/claude-code >/dev/null 2>&1; then
    export KIRO_FAST_CLAUDE_BIN="$dir/node_modules/.bin/claude"
  else
    kf_log "could not install the Claude Code CLI: its end-to-end test will skip"
  fi
}
