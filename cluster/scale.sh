#!/usr/bin/env bash
# Print a compose override that adds nodes n4..nN to docker-compose.yml, each shaped
# like n3 (its own node ID, volume, and host port DTWZ_N<i>_PORT, default 7000+i):
#
#   cluster/scale.sh 5 > docker-compose.override.yml   # compose reads it by itself
#   docker-compose up -d                                 # n1..n5
#   docker stack deploy -c docker-compose.yml -c docker-compose.override.yml dtwz
#
# Why not `docker-compose up --scale`: replicas of one service would share its node ID
# and its named volume; a dtwz node is its identity plus its store.
set -euo pipefail

n=${1:-}
if [[ ! $n =~ ^[0-9]+$ ]] || ((n < 4 || n > 99)); then
    echo "usage: cluster/scale.sh N   (4 <= N <= 99: the cluster gets nodes n1..nN)" >&2
    exit 2
fi

cat <<EOF
# Nodes n4..n$n for docker-compose.yml, made by: cluster/scale.sh $n
version: "3.8"

services:
EOF
for ((i = 4; i <= n; i++)); do
    cat <<EOF
  n$i:
    image: \${DTWZ_IMAGE:-dtwz:latest}
    hostname: n$i
    networks: [dtwz]
    restart: unless-stopped
    stop_grace_period: 20s
    environment:
      DTWZ_SEEDS: tcp://n1:7100,tcp://n2:7100,tcp://n3:7100
      DTWZ_CLUSTER_ID: \${DTWZ_CLUSTER_ID:-dtwz}
      DTWZ_KEYS_DIR: /keys
      DTWZ_NODE_ID: n$i
      DTWZ_ADVERTISE_HOST: n$i
      DTWZ_ADVERTISE_URL: http://\${DTWZ_PUBLIC_HOST:-127.0.0.1}:\${DTWZ_N${i}_PORT:-$((7000 + i))}
    ports: ["\${DTWZ_PUBLISH_ADDR:-127.0.0.1}:\${DTWZ_N${i}_PORT:-$((7000 + i))}:7000"]
    volumes: ["n$i-data:/data", "keys:/keys"]
    depends_on: [n1]
    deploy:
      replicas: 1
      restart_policy:
        condition: any
EOF
done
echo
echo "volumes:"
for ((i = 4; i <= n; i++)); do
    echo "  n$i-data: {}"
done
