# Sourced by the scripts that install what is missing (services.sh, and through
# scripts/procs.sh bench-batch-api.sh and compare-gateways.sh):
# `have PROGRAM`, and `apt_install PACKAGE…` from the distribution's packages (Debian/Ubuntu),
# through sudo unless root, refreshing the package lists only when an install fails. The
# sourcing script defines `say`.

have() { command -v "$1" >/dev/null 2>&1; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

apt_install() {
  say "installing $* from the distribution's packages"
  if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"; then
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
  fi
}
