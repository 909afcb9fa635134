# Enter the pi0_ros environment:  source ./env.sh
# Activates the venv, points ament at it, keeps DDS on loopback and overlays ./install when built.
# Pass --no-install to skip the overlay (used by scripts/setup.sh before the first build).
_pi0_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"
_pi0_venv="${PI0_VENV:-$_pi0_root/.venv}"
if [ ! -f "$_pi0_venv/bin/activate" ]; then
  echo "pi0_ros: no venv at $_pi0_venv; run scripts/setup.sh first." >&2
  return 1 2>/dev/null || exit 1
fi
# shellcheck disable=SC1091
. "$_pi0_venv/bin/activate"
export AMENT_PREFIX_PATH="$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
if [ "${1:-}" != "--no-install" ] && [ -f "$_pi0_root/install/local_setup.bash" ]; then
  # colcon's setup scripts read unset variables: relax `set -u` while sourcing them.
  case $- in *u*) _pi0_nounset=1; set +u;; *) _pi0_nounset=0;; esac
  # shellcheck disable=SC1091
  . "$_pi0_root/install/local_setup.bash"
  [ "$_pi0_nounset" = 1 ] && set -u
  unset _pi0_nounset
  # ament_python console scripts land in lib/<pkg>, which is not on PATH by default.
  export PATH="$_pi0_root/install/pi0_policy/lib/pi0_policy:$PATH"
fi
unset _pi0_root _pi0_venv
