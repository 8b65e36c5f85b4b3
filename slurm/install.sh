#!/usr/bin/env bash
# Install the Debian packages the loopback SLURM cluster needs (slurm-wlm, munge, slurmdbd, mariadb).
# Idempotent and quiet: does nothing when everything is installed. Needs root (or passwordless sudo).
set -euo pipefail

core_packages=(slurmctld slurmd slurm-client munge)
accounting_packages=(slurmdbd mariadb-server)

is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing_from() {
    local package
    for package in "$@"; do
        is_installed "$package" || echo "$package"
    done
}

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo "$@"
    else
        echo "install.sh: root is needed to install: $*" >&2
        exit 1
    fi
}

apt_install() {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" >/dev/null
}

mapfile -t missing_core < <(missing_from "${core_packages[@]}")
mapfile -t missing_accounting < <(missing_from "${accounting_packages[@]}")

if ((${#missing_core[@]} + ${#missing_accounting[@]} > 0)); then
    echo "install.sh: installing ${missing_core[*]} ${missing_accounting[*]}" >&2
    as_root apt-get update -qq >/dev/null
    if ((${#missing_core[@]} > 0)); then
        apt_install "${missing_core[@]}"
    fi
    if ((${#missing_accounting[@]} > 0)); then
        apt_install --no-install-recommends "${missing_accounting[@]}"
    fi
fi

if [[ ! -s /etc/munge/munge.key ]]; then
    as_root mungekey --create --keyfile=/etc/munge/munge.key
    as_root chown munge:munge /etc/munge/munge.key
    as_root chmod 400 /etc/munge/munge.key
fi
