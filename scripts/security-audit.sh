#!/usr/bin/env bash
# Security audit, run by scripts/test (and so by .ci/run). Exits 1 on any real finding.
#
#   scripts/security-audit.sh [rust] [python] [secrets] [permissions] [fuzz]   (default: all)
#
# rust         cargo-deny (deny.toml): RustSec advisories and yanked crates when the advisory
#              database can be fetched; always, offline: licences, one version per crate, no
#              wildcard requirements, crates.io as the only source; yanked crates through the
#              crates.io sparse index when only the database is out of reach. clippy -D warnings
#              with undocumented unsafe denied, and a `// SAFETY:` comment on every `unsafe`.
# python       pip-audit of the runtime dependency closure (PyPI's vulnerability data); ruff's
#              flake8-bandit rules (S) over all Python code; no S suppression without a reason;
#              pip check.
# secrets      no private keys, cloud or registry tokens, random-looking secrets or .env/key
#              files in what git tracks or would add (scripts/security_audit.py has the rules and
#              the allowlist, each entry with its reason).
# permissions  a real `memobuild hash`, `memobuild build` and `memobuild server` under umask 000
#              create every directory 0700 and every file 0600.
# fuzz         cargo-fuzz (libFuzzer, stable toolchain, no sanitizer) on .dockerignore matching
#              and layer unpacking, MEMOBUILD_FUZZ_SECONDS (default 20) per target.
#
# A database or service that cannot be reached is not a finding: it is said on one line
# ("... unreachable: <what>; checked offline: <list>") and everything else still runs.
# Tools come from the registries the project uses: cargo-deny and cargo-fuzz from crates.io
# (`cargo install --locked`, pinned; about 4 and 1 minutes of compiling on a 2-core machine the
# first time, nothing after while ~/.cargo/bin is kept), pip-audit from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION=0.20.2
CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECONDS=${MEMOBUILD_FUZZ_SECONDS:-20}

sections=("$@")
((${#sections[@]})) || sections=(rust python secrets permissions fuzz)
for s in "${sections[@]}"; do
  case "$s" in
    rust | python | secrets | permissions | fuzz) ;;
    *)
      echo "usage: $0 [rust] [python] [secrets] [permissions] [fuzz]" >&2
      exit 2
      ;;
  esac
done

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

findings=0
finding() {
  echo "audit: FINDING: $*" >&2
  findings=$((findings + 1))
}
say() { echo "audit: $*" >&2; }

# Runs a tool that reports its own findings: any non-zero exit is a finding (output above).
gate() {
  local what=$1
  shift
  local rc=0
  "$@" || rc=$?
  ((rc == 0)) || finding "$what: failed with exit code $rc (its report is above)"
}

# Runs a check whose output lines are the findings; exit 1 means there were some.
check() {
  local what=$1
  shift
  local rc=0
  "$@" >"$work/out" 2>"$work/err" || rc=$?
  cat "$work/err" >&2
  if ((rc == 1)); then
    while IFS= read -r line; do finding "$what: $line"; done <"$work/out"
    [[ -s "$work/out" ]] || finding "$what failed"
  elif ((rc != 0)); then
    cat "$work/out" >&2
    finding "$what could not run (exit $rc)"
  else
    cat "$work/out"
  fi
}

cargo_tool() { # name version: installs `cargo <name>` at that version unless it is there
  local name=$1 version=$2
  if ! cargo "${name#cargo-}" --version 2>/dev/null | grep -qF " $version"; then
    say "installing $name $version from crates.io (cargo install --locked)"
    cargo install --quiet --locked "$name" --version "$version"
  fi
}

wants() {
  local s
  for s in "${sections[@]}"; do [[ "$s" == "$1" ]] && return 0; done
  return 1
}

# --- Rust --------------------------------------------------------------------------------------
if wants rust; then
  echo "== audit: rust dependencies (cargo-deny)"
  cargo_tool cargo-deny "$CARGO_DENY_VERSION"
  if cargo deny fetch db >"$work/fetch" 2>&1; then
    gate "cargo-deny" cargo deny --log-level error check advisories bans licenses sources
  else
    reason=$(grep -m1 -oE "unable to access.*|Could not resolve.*" "$work/fetch" ||
      tail -n1 "$work/fetch")
    offline="licences, duplicate crates, wildcards, sources (crates.io only)"
    yanked_rc=0
    python3 scripts/security_audit.py yanked Cargo.lock >"$work/yanked" 2>"$work/yanked.err" ||
      yanked_rc=$?
    if ((yanked_rc == 3)); then
      say "crates.io index unreachable: $(cat "$work/yanked.err"); yanked crates not checked"
    else
      offline+=", yanked crates (crates.io sparse index)"
      cat "$work/yanked.err" >&2
      if ((yanked_rc == 1)); then
        while IFS= read -r line; do finding "yanked: $line"; done <"$work/yanked"
      elif ((yanked_rc != 0)); then
        finding "yanked-crate check could not run (exit $yanked_rc)"
      fi
    fi
    say "advisory database unreachable: RustSec advisory-db (${reason}); checked offline: $offline"
    gate "cargo-deny" cargo deny --offline --log-level error check bans licenses sources
  fi

  echo "== audit: clippy and unsafe"
  gate "clippy" cargo clippy --all-targets --quiet -- -D warnings \
    -D clippy::undocumented_unsafe_blocks -D clippy::missing_safety_doc
  check "unsafe" python3 scripts/security_audit.py unsafe rust fuzz/fuzz_targets
fi

# --- Python ------------------------------------------------------------------------------------
if wants python; then
  echo "== audit: python dependencies (pip-audit)"
  command -v pip-audit >/dev/null 2>&1 ||
    python3 -m pip install --quiet --disable-pip-version-check 'pip-audit>=2.7,<3'
  python3 scripts/security_audit.py requirements >"$work/requirements.txt"
  audit_rc=0
  pip-audit --disable-pip --no-deps --progress-spinner off -f json -r "$work/requirements.txt" \
    >"$work/pip-audit.json" 2>"$work/pip-audit.err" || audit_rc=$?
  offline="ruff security rules (S) over python/ tests/ benches/ scripts/ fuzz/, a reason on every S suppression, pip check"
  if ((audit_rc > 1)) || ! [[ -s "$work/pip-audit.json" ]]; then
    what=$(grep -m1 -oE "(Max retries|NameResolution|Connection|Timeout)[A-Za-z]*[^)]*" \
      "$work/pip-audit.err" || tail -n1 "$work/pip-audit.err")
    say "advisory database unreachable: pip-audit's vulnerability service: $what; checked offline: $offline"
  else
    report_rc=0
    python3 scripts/security_audit.py pip-audit-report <"$work/pip-audit.json" \
      >"$work/report" 2>"$work/report.err" || report_rc=$?
    if ((report_rc == 3)); then
      say "advisory database unreachable: $(tail -n1 "$work/report.err"); checked offline: $offline"
    else
      cat "$work/report.err" >&2
      if ((report_rc == 1)); then
        while IFS= read -r line; do finding "pip-audit: $line"; done <"$work/report"
      elif ((report_rc != 0)); then
        finding "pip-audit report could not be read (exit $report_rc)"
      fi
    fi
  fi

  echo "== audit: python static analysis"
  check "ruff S" ruff check --quiet --output-format concise --select S \
    python tests benches scripts fuzz
  check "suppressions" python3 scripts/security_audit.py suppressions
  check "pip check" python3 -m pip check --disable-pip-version-check
fi

# --- Secrets -----------------------------------------------------------------------------------
if wants secrets; then
  echo "== audit: committed secrets"
  check "secrets" python3 scripts/security_audit.py secrets
fi

# --- Permissions -------------------------------------------------------------------------------
if wants permissions; then
  echo "== audit: private permissions of the cache and the server's storage"
  not_private() { # every directory 0700 and file 0600 or stricter
    find "$1" \( -type d -o -type f \) -perm /077 -printf '%m %p\n'
  }
  mkdir -p "$work/ctx"
  printf 'hello\n' >"$work/ctx/hello.txt"
  printf 'FROM scratch\nCOPY hello.txt /hello.txt\n' >"$work/ctx/Dockerfile"
  (
    umask 000 # the code must ask for private modes itself, whatever the umask
    export MEMOBUILD_CACHE_DIR="$work/cache"
    memobuild hash "$work/ctx" >/dev/null
    memobuild build "$work/ctx" --progress=plain -t audit:1 >/dev/null 2>"$work/build.log"
  ) || {
    cat "$work/build.log" >&2
    finding "permissions: memobuild hash/build failed"
  }
  [[ -d "$work/cache/blobs" ]] || finding "permissions: the build wrote no blobs to check"
  while IFS= read -r line; do finding "cache not private: $line"; done < <(not_private "$work/cache")

  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # The interpreter itself, not a wrapper (pyenv's shims run Python as a child), so that the
  # pid we stop is the server's.
  python=$(python3 -c 'import sys; print(sys.executable)')
  (
    umask 000
    exec "$python" -m memobuild.cli server --storage "$work/storage" --port "$port" \
      >"$work/server.log" 2>&1
  ) &
  server_pid=$!
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  printf 'audit blob\n' >"$work/blob"
  digest=$(sha256sum "$work/blob" | cut -d' ' -f1)
  status=$(curl -sS -o /dev/null -w '%{http_code}' -X PUT --data-binary @"$work/blob" \
    "http://127.0.0.1:$port/v1/blobs/sha256:$digest" || true)
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true # the server finishes requests in flight, then exits
  server_pid=""
  if [[ "$status" != 201 ]]; then
    cat "$work/server.log" >&2
    finding "permissions: the server did not store a blob (HTTP $status)"
  fi
  while IFS= read -r line; do finding "server storage not private: $line"; done \
    < <(not_private "$work/storage")
fi

# --- Fuzzing -----------------------------------------------------------------------------------
if wants fuzz; then
  echo "== audit: fuzzing (${FUZZ_SECONDS}s per target)"
  cargo_tool cargo-fuzz "$CARGO_FUZZ_VERSION"
  for target in dockerignore unpack_layer; do
    mkdir -p "$work/corpus-$target"
    rc=0
    # -s none: sanitizers need a nightly compiler; the targets are safe Rust, and libFuzzer still
    # catches panics, failed assertions, timeouts and runaway memory.
    (cd fuzz && cargo fuzz run -s none -O "$target" "$work/corpus-$target" "seeds/$target" -- \
      -max_total_time="$FUZZ_SECONDS" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1) >"$work/fuzz-$target.log" 2>&1 || rc=$?
    runs=$(grep -m1 -oE '^stat::number_of_executed_units: *[0-9]+' "$work/fuzz-$target.log" |
      grep -oE '[0-9]+$' || echo "?")
    if ((rc != 0)); then
      grep -E "panicked|ERROR|SUMMARY|artifact" "$work/fuzz-$target.log" >&2 || tail -n 20 "$work/fuzz-$target.log" >&2
      finding "fuzz $target: failed after $runs runs (reproducer in fuzz/artifacts/$target/)"
    else
      say "fuzz $target: $runs runs in ${FUZZ_SECONDS}s, no crash"
    fi
  done
fi

if ((findings)); then
  echo "== audit: $findings finding(s)" >&2
  exit 1
fi
echo "== audit: no findings"
