#!/usr/bin/env bash
# Install what tests/test_slurm.py needs to start its one-node Slurm cluster: slurmctld, slurmd,
# the client commands and munge, from Debian's packages. Does nothing when they are present.
set -euo pipefail
PACKAGES=(slurmctld slurmd slurm-client munge)
have() { [ -x "/usr/sbin/slurmctld" ] && [ -x "/usr/sbin/slurmd" ] && [ -x "/usr/sbin/munged" ] && command -v sbatch >/dev/null; }
if have; then
  echo "install_slurm: Slurm $(dpkg-query -W -f='${Version}' slurm-client 2>/dev/null) and munge are installed"
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "install_slurm: Slurm is not installed and this user can neither install it (not root, no sudo)" \
       "nor run the test cluster; as root: apt-get install -y ${PACKAGES[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q "${PACKAGES[@]}"
have && echo "install_slurm: installed Slurm $(dpkg-query -W -f='${Version}' slurm-client 2>/dev/null) and munge"
