#!/usr/bin/env bash
# Make a self-signed development certificate for localhost / 127.0.0.1,
# written next to this script: certs/server.crt and certs/server.key.
# For development and tests only; never commit the output (see .gitignore).
#
#   certs/gen-dev-cert.sh            # refuses to overwrite existing files
#   FORCE=1 certs/gen-dev-cert.sh    # overwrite
set -euo pipefail

DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CRT="$DIR/server.crt"
KEY="$DIR/server.key"
DAYS=${DAYS:-365}

command -v openssl >/dev/null || { echo "openssl not found (apt-get install openssl)" >&2; exit 1; }

if [[ -e $CRT || -e $KEY ]] && [[ ${FORCE:-0} != 1 ]]; then
    echo "$CRT or $KEY already exists; set FORCE=1 to overwrite" >&2
    exit 1
fi

umask 077   # the key must not be world-readable
openssl req -x509 -newkey rsa:2048 -nodes -days "$DAYS" \
    -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$KEY" -out "$CRT" 2>/dev/null
chmod 600 "$KEY"
chmod 644 "$CRT"

echo "wrote $CRT"
echo "wrote $KEY"
openssl x509 -in "$CRT" -noout -subject -enddate -ext subjectAltName 2>/dev/null | sed 's/^/  /'
