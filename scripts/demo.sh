#!/usr/bin/env bash
# README command 1: set everything up (first run only) and run the simulated bimanual ALOHA driven by
# the π0 node over ROS 2: two randomised transfer-cube episodes with the small trained π0. Extra
# arguments go to pi0_sim_demo (e.g. --episodes 20, --random-model, or --episodes 0 --duration 30
# for one timed run, --checkpoint PATH --prompt TEXT). Results (plot, video, summary) land in
# ./out/demo.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
# shellcheck disable=SC1091
source ./env.sh
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 1 ))}"
exec pi0_sim_demo --episodes 2 --duration 20 --output-dir "$ROOT/out/demo" "$@"
