#!/bin/sh
# Create the secret files deploy/compose.yaml mounts under /run/secrets/ (kept if they exist):
#   db_password, redis_password    random hex (safe inside the URLs of gateway.yaml without escaping)
#   tls_certificate, tls_key       a self-signed certificate for gateway.localhost (nginx); replace
#                                  them with your real ones for any other name
# Compose bind-mounts these files as they are on the host, so the gateway (uid 10001) and PostgreSQL
# (uid 999) need to read them: the files are 0444 inside a directory only you can enter (0700).
set -eu
umask 077
dir="$(cd "$(dirname "$0")" && pwd)/secrets"
mkdir -p "$dir"
chmod 0700 "$dir"

secret() {
  if [ ! -s "$dir/$1" ]; then
    openssl rand -hex 32 >"$dir/$1"
    echo "created $dir/$1"
  fi
  chmod 0444 "$dir/$1"
}
secret db_password
secret redis_password

if [ ! -s "$dir/tls_certificate" ] || [ ! -s "$dir/tls_key" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -subj "/CN=gateway.localhost" -addext "subjectAltName=DNS:gateway.localhost" \
    -keyout "$dir/tls_key" -out "$dir/tls_certificate" 2>/dev/null
  echo "created $dir/tls_certificate and tls_key (self-signed, gateway.localhost)"
fi
chmod 0444 "$dir/tls_certificate"
chmod 0400 "$dir/tls_key"
