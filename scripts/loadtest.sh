#!/usr/bin/env bash
# Load test `casetag serve` on loopback: throughput and p50/p99 latency of
# POST /v1/tag at several client concurrencies, with dynamic batching on and
# off, printed as a markdown table.
#
# Uses a real load generator: `oha` (installed with `cargo install oha
# --locked` when missing) or `wrk` (`apt-get install -y wrk`). Each run is
# bounded (--duration seconds); the server binds 127.0.0.1 only and is
# stopped on exit, whatever happens.
#
#   scripts/loadtest.sh --model models/tagger [--fallback models/baseline]
#       [--duration 10] [--concurrency "1 8 32"] [--cases 1] [--modes "on off"]
#       [--deadline-ms 0] [--texts FILE] [--tool oha|wrk] [--bin PATH]
#       [--out table.md] [-- EXTRA SERVE FLAGS...]
#
# --deadline-ms defaults to 0 (off) so that the numbers measure the model
# under test and not a fallback answering missed deadlines; pass the
# production value to see the combined behaviour.
#
# --texts FILE: one text per line. With wrk, requests cycle through them
# (each request the next --cases texts), so a file of real transcripts
# gives the real length mix; oha sends the first request only.
set -euo pipefail

usage() {
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

MODEL=""
FALLBACK=""
DURATION=10
CONCURRENCY="1 8 32"
CASES=1
MODES="on off"
DEADLINE_MS=0
TEXTS=""
TOOL=""
BIN=""
OUT=""
READY_TIMEOUT=600
EXTRA=()

while [[ $# -gt 0 ]]; do
    case "$1" in
        --model) MODEL="$2"; shift 2 ;;
        --fallback) FALLBACK="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --concurrency) CONCURRENCY="$2"; shift 2 ;;
        --cases) CASES="$2"; shift 2 ;;
        --modes) MODES="$2"; shift 2 ;;
        --deadline-ms) DEADLINE_MS="$2"; shift 2 ;;
        --texts) TEXTS="$2"; shift 2 ;;
        --tool) TOOL="$2"; shift 2 ;;
        --bin) BIN="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --ready-timeout) READY_TIMEOUT="$2"; shift 2 ;;
        --) shift; EXTRA=("$@"); break ;;
        -h|--help) usage ;;
        *) echo "loadtest: unknown argument '$1'" >&2; usage ;;
    esac
done
[[ -n "$MODEL" ]] || { echo "loadtest: --model is required" >&2; usage; }
[[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -ge 1 && "$DURATION" -le 600 ]] \
    || { echo "loadtest: --duration must be 1..600 seconds" >&2; exit 2; }
[[ "$CASES" =~ ^[0-9]+$ && "$CASES" -ge 1 ]] || { echo "loadtest: --cases must be >= 1" >&2; exit 2; }
for m in $MODES; do
    [[ "$m" == on || "$m" == off ]] || { echo "loadtest: --modes takes 'on' and/or 'off'" >&2; exit 2; }
done
command -v python3 >/dev/null || { echo "loadtest: python3 is needed to read results" >&2; exit 2; }
command -v curl >/dev/null || { echo "loadtest: curl is needed" >&2; exit 2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/casetag-loadtest.XXXXXX")"
SERVER_PID=""

stop_server() {
    if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}
cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "loadtest: $*" >&2; }
die() { log "$*"; exit 1; }

# --- the binary -------------------------------------------------------------
if [[ -z "$BIN" ]]; then
    log "building casetag (release)"
    (cd "$ROOT" && cargo build --release --bin casetag) >&2
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/casetag"
fi
[[ -x "$BIN" ]] || die "no executable at $BIN"

# --- the load generator -----------------------------------------------------
if [[ -z "$TOOL" ]]; then
    if command -v oha >/dev/null; then
        TOOL=oha
    elif command -v wrk >/dev/null; then
        TOOL=wrk
    else
        log "installing oha (cargo install oha --locked)"
        if cargo install oha --locked >&2; then
            TOOL=oha
        elif command -v apt-get >/dev/null && apt-get install -y wrk >&2; then
            TOOL=wrk
        else
            die "neither oha nor wrk is available and neither could be installed"
        fi
    fi
fi
case "$TOOL" in
    oha) command -v oha >/dev/null || { export PATH="$HOME/.cargo/bin:$PATH"; command -v oha >/dev/null; } \
            || die "oha not found (cargo install oha --locked)" ;;
    wrk) command -v wrk >/dev/null || die "wrk not found (apt-get install -y wrk)" ;;
    *) die "--tool must be oha or wrk" ;;
esac

# --- the request body -------------------------------------------------------
BODY="$WORK/body.json"
BODIES="$WORK/bodies.jsonl"
python3 - "$CASES" "$TEXTS" "$BODIES" >"$BODY" <<'PY'
import json, sys
n, path = int(sys.argv[1]), sys.argv[2]
if path:
    with open(path, encoding="utf-8") as f:
        texts = [l.strip() for l in f if l.strip()]
    if not texts:
        sys.exit(f"loadtest: {path} has no non-empty lines")
else:
    texts = [
        "buyer: I received the parcel today but the phone case is missing from the box. "
        "seller: Sorry to hear that, could you send a photo of the package? "
        "buyer: Sent. I want a refund for the missing item.",
        "buyer: The tracking number has not updated for 6 days and the delivery date has passed. "
        "agent: I have contacted the courier. buyer: Please cancel if it does not arrive this week.",
        "buyer: The blender arrived with a cracked jug and it leaks. I'd like a replacement or a refund. "
        "seller: We can offer a partial refund of 30%. buyer: That is not acceptable, I want to return it.",
        "buyer: I was charged twice for order 88213. system: duplicate payment detected. "
        "agent: The second charge will be reversed within 5 working days.",
    ]
def body(start):
    cases = [{"id": f"c{i}", "text": texts[(start + i) % len(texts)]} for i in range(n)]
    return json.dumps({"cases": cases, "top_k": 3}, ensure_ascii=False)
print(body(0))
# With more texts than one request holds, wrk sends a different request each
# time (up to 2,000), cycling through the texts in order.
with open(sys.argv[3], "w", encoding="utf-8") as f:
    for start in range(0, min(len(texts), 2000 * n), n):
        f.write(body(start) + "\n")
PY

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# --- server lifecycle -------------------------------------------------------
start_server() { # $1 = on|off
    local mode="$1" port
    port="$(free_port)"
    BASE="http://127.0.0.1:$port"
    local args=(serve --model "$MODEL" --addr "127.0.0.1:$port" --deadline-ms "$DEADLINE_MS")
    [[ -n "$FALLBACK" ]] && args+=(--fallback "$FALLBACK")
    [[ "$mode" == off ]] && args+=(--no-batching)
    args+=("${EXTRA[@]}")
    log "starting: $BIN ${args[*]}"
    CASETAG_LOG="${CASETAG_LOG:-warn}" "$BIN" "${args[@]}" >"$WORK/server-$mode.log" 2>&1 &
    SERVER_PID=$!
    local waited=0
    until curl -sf -o /dev/null "$BASE/readyz"; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            tail -n 20 "$WORK/server-$mode.log" >&2 || true
            SERVER_PID=""
            die "the server exited before it was ready"
        fi
        sleep 0.2
        waited=$((waited + 1))
        [[ $waited -lt $((READY_TIMEOUT * 5)) ]] || die "the server was not ready after ${READY_TIMEOUT}s"
    done
    # A request that must succeed before load: fail fast on a broken setup.
    curl -sf -o /dev/null -H 'content-type: application/json' --data-binary "@$BODY" "$BASE/v1/tag" \
        || die "a test request to $BASE/v1/tag failed: $(curl -s -H 'content-type: application/json' --data-binary "@$BODY" "$BASE/v1/tag" | head -c 300)"
}

# Prints "sum count" of the batch-size histogram.
batch_stats() {
    curl -sf "$BASE/metrics" | awk '
        $1 == "casetag_batch_size_cases_sum" { s = $2 }
        $1 == "casetag_batch_size_cases_count" { c = $2 }
        END { printf "%s %s\n", (s == "" ? 0 : s), (c == "" ? 0 : c) }'
}

# --- one load run; prints "rps p50_ms p99_ms errors" ------------------------
run_load() { # $1 = concurrency, $2 = seconds, $3 = output file
    local c="$1" secs="$2" out="$3"
    case "$TOOL" in
        oha)
            local fmt=(--output-format json)
            oha --help 2>/dev/null | grep -q -- '--output-format' || fmt=(-j)
            oha -z "${secs}s" -c "$c" --no-tui "${fmt[@]}" -m POST \
                -H 'content-type: application/json' -D "$BODY" "$BASE/v1/tag" >"$out" 2>"$out.err" \
                || { cat "$out.err" >&2; die "oha failed"; }
            python3 - "$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s, p = r["summary"], r.get("latencyPercentiles", {})
codes = r.get("statusCodeDistribution", {}) or {}
errs = sum(v for k, v in codes.items() if not k.startswith("2"))
# With -z, oha cancels the requests still running at the end of the run and
# lists them as "aborted due to deadline": not server errors.
errs += sum(v for k, v in (r.get("errorDistribution") or {}).items() if "deadline" not in k)
ok = sum(v for k, v in codes.items() if k.startswith("2"))
rps = ok / s["total"] if s.get("total") else 0.0
ms = lambda k: (p.get(k) or 0.0) * 1000
print(f"{rps:.1f} {ms('p50'):.2f} {ms('p99'):.2f} {errs}")
PY
            ;;
        wrk)
            cat >"$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("$BODY", "rb"); wrk.body = f:read("*a"); f:close()
local bodies, at = {}, 0
for line in io.lines("$BODIES") do bodies[#bodies + 1] = line end
request = function()
  at = at % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[at])
end
done = function(summary, latency, requests)
  local errs = summary.errors.status + summary.errors.connect + summary.errors.read
             + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %.1f %.2f %.2f %d\n",
    (summary.requests - summary.errors.status) / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, errs))
end
LUA
            local threads=$(( c < $(nproc) ? c : $(nproc) ))
            wrk -t "$threads" -c "$c" -d "${secs}s" --timeout 30s -s "$WORK/post.lua" "$BASE/v1/tag" >"$out" 2>&1 \
                || { cat "$out" >&2; die "wrk failed"; }
            awk '$1 == "RESULT" { print $2, $3, $4, $5 }' "$out"
            ;;
    esac
}

# --- the matrix -------------------------------------------------------------
ROWS=()
for mode in $MODES; do
    start_server "$mode"
    log "batching $mode: warm-up (2 s)"
    run_load 4 2 "$WORK/warmup.json" >/dev/null
    for c in $CONCURRENCY; do
        log "batching $mode: $c concurrent clients for ${DURATION}s"
        # Not in a subshell: a failing run must stop the script.
        batch_stats >"$WORK/before"
        run_load "$c" "$DURATION" "$WORK/run-$mode-$c.json" >"$WORK/result"
        batch_stats >"$WORK/after"
        read -r s0 n0 <"$WORK/before"
        read -r rps p50 p99 errs <"$WORK/result"
        read -r s1 n1 <"$WORK/after"
        [[ -n "${rps:-}" ]] || die "no result from $TOOL for $c clients"
        mean_batch="$(python3 -c "d=$n1-$n0; print(f'{($s1-$s0)/d:.1f}' if d > 0 else '-')")"
        cases_s="$(python3 -c "print(f'{$rps*$CASES:.1f}')")"
        ROWS+=("| $mode | $c | $rps | $cases_s | $p50 | $p99 | $errs | $mean_batch |")
    done
    stop_server
done

{
    echo "### casetag serve load test"
    echo
    echo "model \`$MODEL\`${FALLBACK:+, fallback \`$FALLBACK\`}; $CASES case(s) per request; ${DURATION}s per run;"
    echo "tool $TOOL; deadline ${DEADLINE_MS} ms (0 = off); $(nproc) CPUs; loopback."
    echo
    echo "| batching | clients | req/s | cases/s | p50 ms | p99 ms | errors | mean batch (cases) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    printf '%s\n' "${ROWS[@]}"
} | tee "${OUT:-/dev/null}"
