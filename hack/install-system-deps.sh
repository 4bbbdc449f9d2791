#!/usr/bin/env bash
# Installs the Debian packages Manticore needs when they are missing, for one purpose:
#   run    (default) HAProxy (the router's data plane), the compiler toolchain npm uses to build
#          better-sqlite3 (the embedded store) from source, and openssl (hack/local-tls.sh);
#   bench  run's, and wrk (the benchmarks' load generator);
#   test   bench's, and Chromium with a font for the web page's browser test (and Chromium's setuid sandbox
#          where this user may not make the user namespace it would sandbox itself in).
# Uses sudo when not run as root. Safe to run again.
set -euo pipefail

purpose="${1:-run}"
case "$purpose" in
  run | bench | test) ;;
  *) echo "usage: $0 [run|bench|test] (got '$purpose')" >&2; exit 2 ;;
esac

missing=()
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v make >/dev/null 2>&1 && command -v g++ >/dev/null 2>&1 || missing+=(build-essential)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# hack/local-tls.sh and the Consul store's TLS tests make their certificates with openssl.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ "$purpose" != run ]; then
  # The benchmarks' load generator (and their harness's test).
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
fi
if [ "$purpose" = test ]; then
  # The web page's browser test drives Debian's Chromium (playwright-core brings no browser of its own).
  # Installed without recommends, Chromium brings no font, and the page would render without glyphs.
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  [ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
  # Chromium sandboxes itself in a user namespace, which a chroot, most containers and some kernels refuse to a
  # user other than root ("No usable sandbox!"); its setuid helper sandboxes it there. Root runs it unsandboxed.
  if [ "$(id -u)" -ne 0 ] && ! unshare --user true 2>/dev/null; then
    [ -u /usr/lib/chromium/chrome-sandbox ] || missing+=(chromium-sandbox)
  fi
fi
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  # A fresh Debian without sudo would otherwise stop at "sudo: command not found", naming nothing missing.
  echo "Manticore needs these Debian packages: ${missing[*]}; install them as root (apt-get install ${missing[*]}), or install sudo" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}" >&2
"${sudo[@]}" apt-get update -qq
# Passed through env: sudo's env_reset would drop it from the environment.
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
