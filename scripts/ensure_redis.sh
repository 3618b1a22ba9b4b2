#!/bin/sh
# Start a local Redis on 127.0.0.1:6379 unless one already answers (tests and the cluster mode
# use it; nothing is persisted).
set -eu
if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    exit 0
fi
redis-server --bind 127.0.0.1 --port 6379 --save '' --appendonly no --daemonize yes >/dev/null
for _ in 1 2 3 4 5 6 7 8 9 10; do
    redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && exit 0
    sleep 0.2
done
echo "redis-server did not start" >&2
exit 1
