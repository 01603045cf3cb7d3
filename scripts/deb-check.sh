#!/usr/bin/env bash
# CI check of the Debian package: build it (make deb), install it with dpkg -i, validate the
# packaged /etc/l4lb/l4lb.toml with the packaged binary, verify the systemd unit, then remove
# (user and config kept) and purge (both gone) it. Needs root; refuses to touch an l4lb
# package that was installed before it ran.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "deb-check: skipped (dpkg -i needs root)"
  exit 0
fi
if dpkg-query -W -f='${Status}' l4lb 2>/dev/null | grep -q 'ok installed'; then
  echo "deb-check: an l4lb package is already installed here; not replacing it" >&2
  exit 1
fi

rm -f target/debian/l4lb_*.deb
make deb
debs=(target/debian/l4lb_*.deb)
deb=${debs[0]}
echo "deb-check: $deb"
dpkg-deb --info "$deb" | sed -n 's/^ *\(Package\|Version\|Depends\):/  &/p'

cleanup() { dpkg --purge l4lb >/dev/null 2>&1 || true; }
trap cleanup EXIT

dpkg -i "$deb"
/usr/bin/l4lb --version
/usr/bin/l4lb --config /etc/l4lb/l4lb.toml --check
/usr/bin/l4lb-loadgen --help >/dev/null
getent passwd l4lb >/dev/null || { echo "deb-check: no l4lb user after install" >&2; exit 1; }
dpkg-query -W -f='${Conffiles}\n' l4lb | grep -q '/etc/l4lb/l4lb.toml' ||
  { echo "deb-check: /etc/l4lb/l4lb.toml is not a conffile" >&2; exit 1; }
test -f /usr/share/doc/l4lb/deployment.md
if command -v systemd-analyze >/dev/null 2>&1; then
  systemd-analyze verify /lib/systemd/system/l4lb.service
  echo "deb-check: systemd-analyze verify passed"
else
  echo "deb-check: systemd-analyze not installed: the unit was not verified"
fi

dpkg -r l4lb
test ! -e /usr/bin/l4lb
getent passwd l4lb >/dev/null || { echo "deb-check: remove deleted the user" >&2; exit 1; }
test -f /etc/l4lb/l4lb.toml || { echo "deb-check: remove deleted the config" >&2; exit 1; }
dpkg --purge l4lb
if getent passwd l4lb >/dev/null; then echo "deb-check: purge kept the user" >&2; exit 1; fi
test ! -e /etc/l4lb || { echo "deb-check: purge kept /etc/l4lb" >&2; exit 1; }
echo "deb-check: installed, checked, removed and purged"
