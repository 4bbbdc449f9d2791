#!/usr/bin/env bash
# Makes a local certificate authority and, signed by it, a wildcard certificate for trying Manticore's TLS
# edge on one machine (manifests/examples/tls.yaml). Run it again to renew the certificate: the CA is kept,
# the certificate is replaced (by rename, as certificate renewers do) and a running router loads it without
# dropping a connection.
#
#   hack/local-tls.sh [DIR] [NAME ...]
#
# DIR defaults to .manticore/tls; NAME defaults to *.sessions.localhost (the sessions of the example config),
# sessions.localhost and localhost (the front end's name). It writes:
#   DIR/ca.pem, DIR/ca.key    the CA (trust ca.pem in a browser, or pass it to curl --cacert)
#   DIR/cert.pem              the certificate followed by the CA (the chain), for router.tls.certFile
#   DIR/key.pem               its private key (mode 600), for router.tls.keyFile
# DAYS (default 90) sets how long the certificate lasts; CA_DAYS (default 3650) the CA's.
#
# Browsers and TLS clients refuse a wildcard directly under a top-level name (*.localhost), so sessions get
# their own level: public.domain sessions.localhost, hosts <token>.sessions.localhost (loopback, like every
# *.localhost name in browsers and curl).
set -euo pipefail

dir=${1:-.manticore/tls}
shift || true
names=("$@")
[ "${#names[@]}" -gt 0 ] || names=('*.sessions.localhost' 'sessions.localhost' 'localhost')
days=${DAYS:-90}
ca_days=${CA_DAYS:-3650}

command -v openssl >/dev/null 2>&1 || { echo "local-tls: openssl is needed (make system-deps installs it)" >&2; exit 1; }
mkdir -p "$dir"
umask 077
work=$(mktemp -d "$dir/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

ec_key=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
if [ ! -s "$dir/ca.pem" ] || [ ! -s "$dir/ca.key" ]; then
  openssl req -x509 "${ec_key[@]}" -keyout "$dir/ca.key" -out "$dir/ca.pem" -days "$ca_days" \
    -subj '/CN=Manticore local CA' -addext 'basicConstraints=critical,CA:TRUE' \
    -addext 'keyUsage=critical,keyCertSign,cRLSign' 2>/dev/null
  chmod 644 "$dir/ca.pem"
  echo "local-tls: made a CA in $dir/ca.pem" >&2
fi

san=''
for name in "${names[@]}"; do
  if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then san+="IP:$name,"; else san+="DNS:$name,"; fi
done
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n' "${san%,}" >"$work/ext"

openssl req "${ec_key[@]}" -keyout "$work/key.pem" -out "$work/csr.pem" -subj "/CN=${names[0]}" 2>/dev/null
# A random serial per certificate, so a renewal is told apart from the certificate it replaces.
openssl x509 -req -in "$work/csr.pem" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
  -days "$days" -extfile "$work/ext" -out "$work/leaf.pem" 2>/dev/null
cat "$work/leaf.pem" "$dir/ca.pem" >"$work/cert.pem"
chmod 644 "$work/cert.pem"
# Key first, then certificate: a watcher that reads the pair between the two renames sees a mismatch and
# waits for the next change rather than loading half of it.
mv -f "$work/key.pem" "$dir/key.pem"
mv -f "$work/cert.pem" "$dir/cert.pem"
echo "local-tls: certificate for ${names[*]} in $dir/cert.pem (key $dir/key.pem), valid $days days" >&2
