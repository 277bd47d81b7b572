#!/usr/bin/env bash
# PostgreSQL for the metadata-store tests at 127.0.0.1:$PG_PORT (default 5432), trust auth,
# database `test`. A server already answering there is used as it is; otherwise Debian's
# package is installed (if missing) and a cluster of our own is started there.
set -euo pipefail

PORT="${PG_PORT:-5432}"
DATA="${PG_DATA:-/var/tmp/driftline-test-postgres-$PORT}"

answers() { pg_isready -q -h 127.0.0.1 -p "$PORT" 2>/dev/null || (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

if answers; then
    echo "PostgreSQL answers on 127.0.0.1:$PORT"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_postgres.sh: nothing answers on 127.0.0.1:$PORT and starting PostgreSQL needs root." >&2
    exit 1
fi
if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql
    # the package may start its own cluster on 5432, with password auth on TCP: ours replaces it
    if command -v pg_lsclusters >/dev/null; then
        pg_lsclusters -h | while read -r version name _; do pg_ctlcluster --force "$version" "$name" stop || true; done
    fi
fi
BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
AS_PG=(runuser -u postgres --)

if [ ! -f "$DATA/PG_VERSION" ]; then
    mkdir -p "$DATA"
    chown postgres:postgres "$DATA"
    "${AS_PG[@]}" "$BIN/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --no-sync >/dev/null
fi
"${AS_PG[@]}" "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w \
    -o "-h 127.0.0.1 -p $PORT -k /tmp -c max_connections=200" start
if ! "${AS_PG[@]}" "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'test'" | grep -q 1; then
    "${AS_PG[@]}" "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres test
fi
echo "PostgreSQL started on 127.0.0.1:$PORT (data in $DATA)"
