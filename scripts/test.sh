#!/usr/bin/env bash
# Run the whole test suite through `colcon test` (README command 2). Sets the environment up first
# when needed (idempotent). Exits non-zero on any failure; pytest's summary is printed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
# shellcheck disable=SC1091
source ./env.sh
# Keep DDS on loopback and give this run its own domain, so concurrent runs do not see each other.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 1 ))}"
export ROS_LOG_DIR="${ROS_LOG_DIR:-$ROOT/log/ros}"
export PYTHONUNBUFFERED=1
echo "[test] colcon test (ROS_DOMAIN_ID=$ROS_DOMAIN_ID)"
status=0
colcon test --event-handlers console_direct+ --return-code-on-test-failure \
  --pytest-args -ra --durations=15 "$@" || status=$?
colcon test-result --verbose || status=$((status == 0 ? 1 : status))
exit "$status"
