# Start and stop the sandbox tenant from a bash script (sourced by scripts/demo; tested by
# tests/test_demo_sandbox.py). Nothing is left running when the script ends: on success, on an
# error under `set -e`, on Ctrl-C or SIGTERM.
#
#   esj_cmd=(.venv/bin/esj-provision)       # how to run esj-provision
#   sandbox_start DIR [sandbox options...]  # returns once DIR/sandbox.env is written; sets sandbox_pid
#   ...                                     # sandbox_stop runs from the EXIT trap set by sandbox_start
#
# A script with more to clean up names its own function in sandbox_on_exit (it must call sandbox_stop).
#
# Why not `esj sandbox ... &` with `esj` a shell function: a backgrounded function runs in a
# subshell, so `$!` is the subshell's pid and killing it leaves the Python server running. A
# backgrounded simple command is exec'd by the forked child, so `$!` is the server itself.

sandbox_pid=""

sandbox_stop() {
  local pid="$sandbox_pid"
  sandbox_pid=""
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    # It stops within a second; SIGKILL if it has not after 10 s (a wedged server must not stay).
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

sandbox_start() {
  local dir="$1"
  shift
  trap "${sandbox_on_exit:-sandbox_stop}" EXIT
  # An interrupted script exits (running the EXIT trap once) instead of carrying on after the handler.
  trap 'exit 130' INT
  trap 'exit 143' TERM
  # --max-runtime: a last guard for the one case no trap sees (the script itself SIGKILLed).
  "${esj_cmd[@]}" sandbox --port 0 --dir "$dir/sandbox" --env-file "$dir/sandbox.env" \
    --max-runtime "${SANDBOX_MAX_RUNTIME:-1800}" "$@" >"$dir/sandbox.log" 2>&1 &
  sandbox_pid=$!
  for _ in $(seq 1 150); do
    [ -s "$dir/sandbox.env" ] && return 0
    if ! kill -0 "$sandbox_pid" 2>/dev/null; then
      echo "the sandbox did not start:" >&2
      cat "$dir/sandbox.log" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "the sandbox did not start in 30 s" >&2
  return 1
}
