#!/usr/bin/env bash
# Packs what scripts/compare.sh needs to run on a host without a package manager or network:
# l4lb and l4lb-loadgen (stripped), this host's haproxy and nginx with their shared libraries
# (libc excluded) and nginx's stream module, plus an env.sh that puts them first in PATH.
# The target host needs glibc >= the one these were built against (2.34 for the Rust
# binaries on Debian 12).
#
# Usage: scripts/bundle-portable.sh [DIR]   (default target/portable); then on the host:
#   . DIR/env.sh && scripts/scaling.sh --quick
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DIR=${1:-target/portable}
rm -rf "$DIR"
mkdir -p "$DIR/bin" "$DIR/lib" "$DIR/libexec"
for b in l4lb l4lb-loadgen; do
  strip -o "$DIR/bin/$b" "target/release/$b"
done
for tool in haproxy nginx; do
  path=$(command -v "$tool" || true)
  [ -n "$path" ] || { echo "bundle: $tool not installed here; skipped" >&2; continue; }
  cp "$path" "$DIR/libexec/$tool"
  ldd "$path" | awk '/=>/ {print $3}' | grep -v -E '/(libc|libm|libpthread|libdl|librt)\.so' |
    while read -r lib; do cp -L "$lib" "$DIR/lib/"; done
  cat >"$DIR/bin/$tool" <<WRAP
#!/bin/sh
here=\$(cd "\$(dirname "\$0")/.." && pwd)
LD_LIBRARY_PATH="\$here/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "\$here/libexec/$tool" "\$@"
WRAP
  chmod +x "$DIR/bin/$tool"
done
if [ -f /usr/lib/nginx/modules/ngx_stream_module.so ]; then
  cp /usr/lib/nginx/modules/ngx_stream_module.so "$DIR/lib/"
fi
cat >"$DIR/env.sh" <<'ENV'
# Source me: puts the bundled binaries first in PATH for scripts/compare.sh.
_bundle=$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)
export PATH="$_bundle/bin:$PATH"
export L4LB_BIN="$_bundle/bin/l4lb" LOADGEN_BIN="$_bundle/bin/l4lb-loadgen"
printf 'load_module %s/lib/ngx_stream_module.so;\n' "$_bundle" >"$_bundle/nginx-modules.conf"
export NGINX_MODULES="$_bundle/nginx-modules.conf"
ENV
du -sh "$DIR"
