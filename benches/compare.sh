#!/usr/bin/env bash
# Side-by-side load test: switchyard vs NATS, with the same load generator (tools/loadgen).
#
#   benches/compare.sh              3 rounds (median, min-max), under 10 minutes
#   benches/compare.sh --rounds 5   more rounds
#   benches/compare.sh --smoke      every scenario once, tiny counts, switchyard only (CI)
#   benches/compare.sh --pin        load generator on CPU 0, every broker on CPU 1 (taskset)
#   benches/compare.sh --switchyard-args "--busy-poll-us 100"   extra flags for switchyard
#
# Each round runs every scenario (`loadgen all`) against: switchyard; nats-server as installed;
# nats-server with GOMAXPROCS=1. Each broker is started fresh on its own 127.0.0.1 port for its
# run and stopped (by PID) right after; the round order of the three rotates from round to round.
# The table compares switchyard with the better of the two NATS runs per scenario. Raw records
# (JSON lines) are kept in target/loadgen/results.jsonl.
#
# The machine has 2 cores: the load generator is one thread, the broker gets the other core.
# Every figure comes with the load generator's own CPU use; `*` marks figures where it neared a
# full core (the harness may be the limit there). Unpinned, sequential latency depends on where
# the scheduler puts the two processes: on a VM a wakeup across CPUs can cost ~100 us more than
# one on the same CPU, so p50 may flip between two modes from run to run. --pin makes placement
# fixed (always across CPUs); it also leaves NATS one CPU, like GOMAXPROCS=1.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=3
SMOKE=0
PIN=0
PORT_BASE=17100
SWITCHYARD_ARGS=""
usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    echo "options: --rounds N (default 3)  --smoke  --pin  --port-base PORT (default 17100)"
    echo "         --switchyard-args \"FLAGS\" (extra broker flags, e.g. \"--busy-poll-us 100\")"
}
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --smoke) SMOKE=1; shift ;;
        --pin) PIN=1; shift ;;
        --port-base) PORT_BASE="$2"; shift 2 ;;
        --switchyard-args) SWITCHYARD_ARGS="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done
case "$ROUNDS" in ''|*[!0-9]*|0) echo "--rounds needs a positive integer" >&2; exit 2 ;; esac

if ! command -v cargo >/dev/null 2>&1; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

echo "== building (release)"
cargo build --release --quiet -p switchyard -p switchyard-loadgen --bins
BIN=target/release

if [ "$SMOKE" = 0 ] && ! command -v nats-server >/dev/null 2>&1; then
    echo "== installing nats-server (Debian package)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get install -y nats-server >/dev/null 2>&1 \
        || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y nats-server >/dev/null; }
fi

HARNESS_CPU=()
BROKER_CPU=()
if [ "$PIN" = 1 ]; then
    HARNESS_CPU=(taskset -c 0)
    BROKER_CPU=(taskset -c 1)
fi

# 10 000 idle connections need as many descriptors, in the load generator and in the broker.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

WORK="$(mktemp -d)"
OUT_DIR=target/loadgen
mkdir -p "$OUT_DIR"
RESULTS="$OUT_DIR/results.jsonl"
: >"$RESULTS"

BROKER_PID=""
cleanup() {
    if [ -n "$BROKER_PID" ]; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

wait_for_port() {
    local port="$1" i
    for i in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            echo "the broker exited before listening on $port" >&2
            return 1
        fi
        sleep 0.05
    done
    echo "nothing listens on 127.0.0.1:$port" >&2
    return 1
}

start_broker() { # label port
    local label="$1" port="$2"
    case "$label" in
        switchyard)
            # Every load-generator connection comes from 127.0.0.1, and idle-conns opens 10 000 of
            # them: lift the connection limits (defaults 10 000 in all, 1 000 per address).
            # shellcheck disable=SC2086 # word splitting of the extra flags is intended
            "${BROKER_CPU[@]}" "$BIN/switchyard" --listen "127.0.0.1:$port" --log-level warn --metrics-listen off \
                --max-connections 100000 --max-connections-per-ip 100000 \
                $SWITCHYARD_ARGS >"$WORK/$label.log" 2>&1 &
            ;;
        nats|nats-gomaxprocs1)
            # max_payload raised so that a 1 MiB body (plus nothing) fits one message.
            cat >"$WORK/$label.conf" <<EOF
host: 127.0.0.1
port: $port
max_payload: 2097152
EOF
            if [ "$label" = nats-gomaxprocs1 ]; then
                GOMAXPROCS=1 "${BROKER_CPU[@]}" nats-server -c "$WORK/$label.conf" >"$WORK/$label.log" 2>&1 &
            else
                "${BROKER_CPU[@]}" nats-server -c "$WORK/$label.conf" >"$WORK/$label.log" 2>&1 &
            fi
            ;;
    esac
    BROKER_PID=$!
    wait_for_port "$port"
}

stop_broker() {
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}

run_against() { # label port [loadgen flags...]
    local label="$1" port="$2" backend=switchyard
    shift 2
    case "$label" in nats*) backend=nats ;; esac
    start_broker "$label" "$port"
    echo "== $label on 127.0.0.1:$port (pid $BROKER_PID)"
    local status=0
    # Bounded: a wedged scenario cannot hold the run forever.
    timeout 300 "${HARNESS_CPU[@]}" "$BIN/loadgen" all --backend "$backend" --label "$label" \
        --addr "127.0.0.1:$port" --broker-pid "$BROKER_PID" --json "$RESULTS" "$@" \
        | grep -v '^{' || status=$?
    stop_broker
    if [ "$status" != 0 ]; then
        echo "loadgen failed against $label (status $status); broker log:" >&2
        tail -n 20 "$WORK/$label.log" >&2 || true
        return 1
    fi
}

START=$SECONDS
if [ "$SMOKE" = 1 ]; then
    run_against switchyard "$PORT_BASE" \
        --requests 300 --warmup-requests 30 --duration-secs 0.5 --warmup-secs 0.2 \
        --peers 10 --large-requests 4 --idle-conns 300 --scale-idle 1,50 \
        --scale-receivers 1,2 --scale-requests 200 --scale-secs 0.3
else
    LABELS=(switchyard nats nats-gomaxprocs1)
    for round in $(seq "$ROUNDS"); do
        echo "==== round $round of $ROUNDS"
        for k in 0 1 2; do
            i=$(((k + round - 1) % 3))
            run_against "${LABELS[$i]}" $((PORT_BASE + 10 * round + i))
        done
    done
fi

echo
echo "==== summary ($((SECONDS - START)) s; records in $RESULTS)"
"$BIN/loadgen" compare "$RESULTS"
