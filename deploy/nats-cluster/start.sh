#!/usr/bin/env bash
# Starts a 3-node JetStream cluster on loopback (client ports 4222-4224, cluster ports
# 6222-6224), data under ${CLUSTER_DIR:-/tmp/switchyard-nats-cluster}. Stop it with
# `kill $(cat "$CLUSTER_DIR"/*.pid)`. Point Switchyard at it with
#   NATS_URL=nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224
# and `[nats] replicas = 3` in the configuration.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${CLUSTER_DIR:-/tmp/switchyard-nats-cluster}
mkdir -p "$dir"
routes="nats-route://127.0.0.1:6222, nats-route://127.0.0.1:6223, nats-route://127.0.0.1:6224"
for i in 1 2 3; do
  port=$((4221 + i)); cport=$((6221 + i))
  sed -e "s|{{NAME}}|n$i|" -e "s|{{PORT}}|$port|" -e "s|{{CLUSTER_PORT}}|$cport|" \
      -e "s|{{ROUTES}}|$routes|" -e "s|{{STORE}}|$dir/n$i|" "$here/node.conf.tmpl" >"$dir/n$i.conf"
  nats-server -c "$dir/n$i.conf" -P "$dir/n$i.pid" >"$dir/n$i.log" 2>&1 &
done
echo "cluster starting: nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"
