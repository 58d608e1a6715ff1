#!/bin/sh
# A private CA and a broker certificate for testing or a closed network.
#   make-certs.sh DIR [HOSTNAME]      -> DIR/ca.crt, DIR/ca.key, DIR/server.crt, DIR/server.key
# Give the daemon DIR/ca.crt as tls_ca. Use a real CA where one exists.
set -eu
dir=${1:?usage: make-certs.sh DIR [HOSTNAME]}
host=${2:-localhost}
mkdir -p "$dir"
cd "$dir"
openssl req -x509 -new -nodes -newkey rsa:2048 -days 3650 -subj "/CN=statecast test CA" \
    -keyout ca.key -out ca.crt 2>/dev/null
openssl req -new -nodes -newkey rsa:2048 -subj "/CN=$host" -keyout server.key -out server.csr \
    2>/dev/null
printf 'subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1\n' "$host" > san.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile san.ext -out server.crt 2>/dev/null
rm -f server.csr san.ext ca.srl
chmod 0644 ca.crt server.crt
chmod 0640 server.key ca.key
echo "wrote $dir/ca.crt $dir/server.crt $dir/server.key"
