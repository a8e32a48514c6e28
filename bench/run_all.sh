#!/usr/bin/env bash
# Run every alertq benchmark; each writes bench/results/<name>.json and <name>.md, and
# this script joins the tables into bench/results/summary.md.
#
#   bench/run_all.sh            # the full suite (about 25 minutes on 2 cores)
#   bench/run_all.sh --quick    # a smoke run with small sizes and one repetition
#   bench/run_all.sh floor producer   # only these benchmarks
#
# Needs PostgreSQL at ALERTQ_BENCH_POSTGRES_URL (default
# postgresql+asyncpg://postgres@127.0.0.1:5432/postgres; each benchmark creates and drops
# its own alertq_bench_* database) and /usr/bin/prometheus-alertmanager for latency.py
# and intake.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${BENCH_OUT:-bench/results}

quick=0
selected=()
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) selected+=("$arg") ;;
  esac
done
if [ ${#selected[@]} -eq 0 ]; then
  selected=(stats_1m floor vs_pgqueuer claim_backlog throughput latency producer memory intake)
fi

args_for() {
  if [ "$quick" = 0 ]; then
    return
  fi
  case "$1" in
    stats_1m)   echo "--rows 100000 --runs 3" ;;
    floor)      echo "--rows 10000 --runs 1" ;;
    vs_pgqueuer) echo "--rows 10000 --runs 1 --sweep-rows 5000" ;;
    claim_backlog) echo "--backlogs 0,30000 --drain-rows 5000 --runs 1" ;;
    throughput) echo "--rows-postgres 5000 --rows-sqlite 5000 --workers 1,4 --runs 1 --legacy-seconds 5" ;;
    latency)    echo "--seconds 5 --runs 1 --legacy-low-rate 0 --idle-seconds 5" ;;
    producer)   echo "--samples 300 --runs 1 --background-rows 10000" ;;
    memory)     echo "--rows 10000 --runs 1" ;;
    intake)     echo "--quick" ;;
  esac
}

mkdir -p "$OUT"
for name in "${selected[@]}"; do
  echo "=== $name $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
  # shellcheck disable=SC2046
  "$PY" "bench/$name.py" --out "$OUT" $(args_for "$name")
done

{
  echo "# alertq benchmark results"
  echo
  echo "Joined by \`bench/run_all.sh\` from each benchmark's latest results; each section gives"
  echo "its command, date and load average. Figures are medians of the stated runs on a shared machine."
  for name in stats_1m floor vs_pgqueuer claim_backlog throughput latency producer memory intake; do
    if [ -f "$OUT/$name.md" ]; then
      echo
      cat "$OUT/$name.md"
    fi
  done
} > "$OUT/summary.md"
echo "summary: $OUT/summary.md"
