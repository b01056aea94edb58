#!/usr/bin/env bash
# Make this machine ready for matrix-run and its tests; idempotent, safe to rerun.
#  - a Docker engine (installed with apt and started in the background when `docker info` fails)
#  - debootstrap, for base images made without any registry
#  - the Python venv .venv with matrix-run and its test dependencies
#  - with --base-images: the Debian base images matrix-run/debian:{bullseye,bookworm,trixie}
set -euo pipefail
cd "$(dirname "$0")/.."

want_images=0
for arg in "$@"; do
  case "$arg" in
    --base-images) want_images=1 ;;
    *) echo "setup.sh: unknown argument $arg" >&2; exit 4 ;;
  esac
done

log() { printf '[setup] %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
command -v dockerd >/dev/null 2>&1 || need_apt+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_apt+=(debootstrap)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  # a daemon killed earlier leaves its pid file behind, and a new dockerd refuses to start until it is gone
  if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    as_root rm -f /var/run/docker.pid
  fi
  as_root sh -c 'nohup setsid dockerd >/var/log/matrix-run-dockerd.log 2>&1 &'
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { log "dockerd did not start; see /var/log/matrix-run-dockerd.log"; exit 3; }
fi

if [ ! -x .venv/bin/matrix-run ] || [ pyproject.toml -nt .venv/.installed ]; then
  log "creating .venv and installing matrix-run[test]"
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test]'
  touch .venv/.installed
fi

if [ "$want_images" = 1 ]; then
  logs=$(mktemp -d -t matrix-run-bootstrap.XXXXXX)  # private: a fixed name under /tmp could be a planted link
  pids=()
  for suite in bullseye bookworm trixie; do
    if ! docker image inspect "matrix-run/debian:$suite" >/dev/null 2>&1; then
      log "bootstrapping matrix-run/debian:$suite (debootstrap, no registry)"
      .venv/bin/matrix-run images bootstrap "$suite" >"$logs/$suite.log" 2>&1 &
      pids+=($!)
    fi
  done
  for pid in "${pids[@]}"; do wait "$pid" || { log "bootstrap failed; see $logs/*.log"; exit 3; }; done
fi
log "ready"
