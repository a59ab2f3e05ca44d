#!/usr/bin/env bash
# One idempotent set-up for `make demo`, `make test` and `make bench` on a Debian 12 machine, as root:
# Debian packages, the kernel-header fallback bcc needs, a virtualenv that sees bcc, pip packages,
# and the Cython build. Each step checks before it acts, so a second run is quick and changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY=${PYTHON:-/usr/bin/python3}
# prometheus: a real Prometheus scrapes a lab agent in the lab tier (run in a lab namespace by the
# test; the package's own service is neither started nor enabled, see below).
# nginx-light: the Ingress controller pods of the lab's Ingress scenario (ebpflb/lab/ingress.py runs
# nginx inside lab pods with a private prefix; openssl makes their throwaway certificates).
APT_PACKAGES=(python3-bpfcc libbpf1 linux-headers-amd64 iproute2 python3-venv python3-dev gcc
              curl iptables nftables conntrack tcpdump bpftool ethtool prometheus nginx-light
              openssl)
# Services of those packages (and of what they pull in) that the tests only ever run inside lab
# namespaces, with their own configuration: when this script installs one, the machine's copy is
# neither started nor enabled at boot. One that was there before the script is the admin's.
LAB_ONLY_SERVICES=(prometheus prometheus-node-exporter nginx)

log() { printf '[setup] %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
    echo "[setup] ebpflb loads eBPF programs and creates network namespaces: run as root" >&2
    exit 1
fi

has_service() {  # NAME: a systemd unit or a SysV script of that name is installed
    [ -e "/lib/systemd/system/$1.service" ] || [ -e "/etc/init.d/$1" ]
}

keep_off() {  # NAME: stopped (policy-rc.d below kept it from starting) and not started at boot
    if [ -d /run/systemd/system ]; then  # booted with systemd
        systemctl disable --now --quiet "$1.service"
    elif command -v systemctl >/dev/null 2>&1; then
        systemctl disable --quiet "$1.service"  # offline: the boot links only (SysV ones too)
    elif command -v update-rc.d >/dev/null 2>&1; then
        update-rc.d "$1" disable >/dev/null
    fi
}

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    # Packages install without starting their services (prometheus, nftables): nothing of the
    # test set-up listens on or changes the machine itself.
    guard=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        guard=/usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT  # also when the install fails
    fi
    new_services=()
    for svc in "${LAB_ONLY_SERVICES[@]}"; do
        has_service "$svc" || new_services+=("$svc")
    done
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    # Their packages enable them for the next boot; a service that listens (nginx on :80,
    # prometheus on :9090) must not appear on the machine after a reboot either.
    for svc in "${new_services[@]}"; do
        if has_service "$svc"; then
            log "keeping the machine's own $svc service off (the lab runs its own)"
            keep_off "$svc" || log "WARNING: could not disable the $svc service: disable it by hand"
        fi
    done
    if [ -n "$guard" ]; then
        rm -f "$guard"
        trap - EXIT
    fi
else
    log "Debian packages present"
fi

# bcc looks for kernel headers under /lib/modules/$(uname -r). Kernels built without modules (as
# on these VMs) ship none; Debian's generic headers are close enough for networking programs.
krel=$(uname -r)
if [ -L "/lib/modules/$krel" ] && [ -e "/lib/modules/$krel/build" ]; then
    log "kernel $krel ships no headers: using the Debian headers linked at /lib/modules/$krel -> $(readlink "/lib/modules/$krel")"
elif [ -e "/lib/modules/$krel/build" ] || [ -e "/lib/modules/$krel/source" ]; then
    log "kernel headers for $krel found"
else
    fallback=$(ls -d /lib/modules/*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$fallback" ] || [ ! -e "$fallback/build" ]; then
        echo "[setup] no kernel headers for $krel and no linux-headers-amd64 fallback" >&2
        exit 1
    fi
    if [ -e "/lib/modules/$krel" ] && [ ! -L "/lib/modules/$krel" ]; then
        echo "[setup] /lib/modules/$krel exists without headers; not touching it" >&2
        exit 1
    fi
    log "running kernel $krel ships no headers: linking /lib/modules/$krel -> $fallback (Debian headers)"
    ln -sfn "$fallback" "/lib/modules/$krel"
fi

if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtualenv $VENV"
    "$PY" -m venv "$VENV"
fi
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# The venv sees bcc (only packaged by Debian) and nothing else of Debian's Python modules.
mkdir -p "$site/_ebpflb_system"
ln -sfn /usr/lib/python3/dist-packages/bcc "$site/_ebpflb_system/bcc"
echo "$site/_ebpflb_system" > "$site/ebpflb-system-bcc.pth"

stamp="$VENV/.deps-stamp"
want=$(cat pyproject.toml requirements-dev.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing Python dependencies"
    "$VENV/bin/pip" install -q --upgrade pip setuptools wheel
    "$VENV/bin/pip" install -q -r requirements-dev.txt
    echo "$want" > "$stamp"
else
    log "Python dependencies up to date"
fi

# Editable install: builds the Cython extension in place and installs the `ebpflb` script.
if ! "$VENV/bin/python" -c 'import ebpflb._flowhash' 2>/dev/null \
   || [ ext/flowhash.pyx -nt "$(ls ebpflb/_flowhash*.so 2>/dev/null | head -1 || echo /nonexistent)" ]; then
    log "building ebpflb (Cython extensions)"
    buildlog="$VENV/build.log"
    if ! { "$VENV/bin/pip" install -q --no-build-isolation --no-deps -e . \
           && "$VENV/bin/python" setup.py -q build_ext --inplace; } >"$buildlog" 2>&1; then
        cat "$buildlog" >&2
        echo "[setup] build failed (log above, kept in $buildlog)" >&2
        exit 1
    fi
else
    log "ebpflb and its Cython extensions built"
fi

mountpoint -q /sys/fs/bpf || { log "mounting bpffs at /sys/fs/bpf"; mount -t bpf bpf /sys/fs/bpf; }
"$VENV/bin/python" -c 'import bcc, ebpflb._flowhash' && log "ready"
