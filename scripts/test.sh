#!/usr/bin/env bash
# THE test command of inputbot: formatting, lints, the unit and runtime tiers, then the
# end-to-end suite against a real control plane and a real Kafka broker.
#
#   scripts/test.sh                 everything (a cold machine builds the tools first: ~30 min)
#   scripts/test.sh FILTER…         the same, passing FILTER… to the e2e `cargo test`
#   scripts/test.sh --e2e-only [FILTER…]
#                                   skip format, lints and the unit/runtime tiers (iterating)
#
# Environment:
#   CARGO_TARGET_DIR          default ~/.cache/inputbot/target (shared by runs and CI)
#   INPUTBOT_E2E_TIMEOUT      seconds the e2e tests may take in all (default 3000: the Kafka
#                             fault tests stream 100,000 events each)
#   INPUTBOT_E2E_EXTERNAL=1   use the cluster in KUBECONFIG and the broker in KAFKA_BOOTSTRAP
#                             instead of starting the local harness (kind, k3d, a real cluster)
#   INPUTBOT_HARNESS_DIR, INPUTBOT_PORT_BASE
#                             where the harness of this run lives (default
#                             /tmp/inputbot-test-harness, ports 24200–24207), so a harness
#                             started by hand (24100…) keeps running beside it
# Whatever happens, the harness this script started is stopped before it exits.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/inputbot/target}"
export INPUTBOT_HARNESS_DIR="${INPUTBOT_HARNESS_DIR:-${TMPDIR:-/tmp}/inputbot-test-harness}"
export INPUTBOT_PORT_BASE="${INPUTBOT_PORT_BASE:-24200}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

TIMINGS=()
T0=$SECONDS
HARNESS_STARTED=0

say() { printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

summary() {
  local line
  echo
  echo "---- scripts/test.sh timings ----"
  for line in "${TIMINGS[@]}"; do echo "$line"; done
  printf '%-40s %5ds\n' "total" "$((SECONDS - T0))"
}

finish() {
  local rc=$?
  trap - EXIT INT TERM
  if (( HARNESS_STARTED )); then
    say "stopping the harness"
    "$ROOT/scripts/harness.sh" stop || rc=1
  fi
  summary
  if (( rc == 0 )); then echo "scripts/test.sh: PASSED"; else echo "scripts/test.sh: FAILED (exit $rc)"; fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# phase NAME CMD…: run, time, and stop the script at the first failure.
phase() {
  local name="$1" start=$SECONDS rc=0; shift
  say "$name: $*"
  "$@" || rc=$?
  TIMINGS+=("$(printf '%-40s %5ds %s' "$name" "$((SECONDS - start))" "$( ((rc == 0)) && echo ok || echo "FAILED ($rc)")")")
  if (( rc != 0 )); then
    say "$name FAILED (exit $rc)"
    exit "$rc"
  fi
}

E2E_ONLY=0
if [[ "${1:-}" == --e2e-only ]]; then E2E_ONLY=1; shift; fi

if (( ! E2E_ONLY )); then
  phase "format (cargo fmt --check)" cargo fmt --all --check
  phase "lints (cargo clippy)" cargo clippy --workspace --all-targets -- -D warnings
  phase "unit + runtime tiers" cargo test --workspace --exclude inputbot-e2e
fi

if [[ "${INPUTBOT_E2E_EXTERNAL:-}" == 1 ]]; then
  : "${KUBECONFIG:?INPUTBOT_E2E_EXTERNAL=1 needs KUBECONFIG}"
  : "${KAFKA_BOOTSTRAP:?INPUTBOT_E2E_EXTERNAL=1 needs KAFKA_BOOTSTRAP}"
  unset INPUTBOT_HARNESS_DIR INPUTBOT_K8S_VERSION
  say "using the cluster in KUBECONFIG=$KUBECONFIG and the broker at $KAFKA_BOOTSTRAP"
else
  phase "tools (scripts/tools.sh)" "$ROOT/scripts/tools.sh"
  HARNESS_STARTED=1
  # Never reuse a harness a killed run left behind: start from a clean cluster and broker.
  "$ROOT/scripts/harness.sh" stop >/dev/null 2>&1 || true
  phase "harness start" "$ROOT/scripts/harness.sh" start
  eval "$("$ROOT/scripts/harness.sh" env)"
fi
# Built first, so that the time limit below is the tests' own. The suite runs the operator
# and the runtime as child processes: their binaries are built beside the test binaries.
phase "e2e build" cargo build -p inputbot-operator -p inputbot-runtime --bins
# The container images, from those binaries (umoci, no container engine; see docs/install.md),
# then their checks: non-root numeric user, entrypoint, no shell, the binaries run from the
# unpacked root filesystem. Warm: well under a minute.
build_images() { "$ROOT/scripts/tools.sh" images && "$ROOT/scripts/images.sh"; }
phase "images (scripts/images.sh)" build_images
phase "e2e test build" cargo test -p inputbot-e2e --no-run
phase "image checks (--test images)" cargo test -p inputbot-e2e --test images
# A hung test (a client stuck in a destructor, a watch that never ends) must not hang CI.
phase "e2e tier (cargo test -p inputbot-e2e)" \
  timeout --kill-after=30 "${INPUTBOT_E2E_TIMEOUT:-3000}" cargo test -p inputbot-e2e --no-fail-fast -- "$@"
