#!/usr/bin/env bash
# Side-by-side: flywheel-flags (Rust, release build) vs the official
# GrowthBook JavaScript SDK on the same 100 features x 10,000 users.
# Prints both timings, the ratio, and the number of differing results.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
data="${DATA_DIR:-$here/data}"
users="${USERS:-10000}"
features="${FEATURES:-100}"
iterations="${ITERATIONS:-10}"

cd "$here"
if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --silent; else npm install --no-audit --no-fund --silent; fi

cd "$repo"
cargo build --release -p flywheel-flags --example bench_users --quiet
bin="${CARGO_TARGET_DIR:-$repo/target}/release/examples/bench_users"
"$bin" generate "$data" "$users" "$features"
rust_line="$("$bin" run "$data" "$iterations")"
echo "$rust_line"
set +e
js_out="$(node "$here/bench.js" "$data" "$iterations")"
js_status=$?
set -e
echo "$js_out"
rust_ns="$(sed -n 's/.* ns_per_eval=\([0-9.]*\) .*/\1/p' <<<"$rust_line")"
rust_attrs_ns="$(sed -n 's/.*ns_per_eval_with_attrs=\([0-9.]*\).*/\1/p' <<<"$rust_line")"
js_ns="$(grep '^js:' <<<"$js_out" | sed -n 's/.* ns_per_eval=\([0-9.]*\) .*/\1/p')"
awk -v r="$rust_ns" -v ra="$rust_attrs_ns" -v j="$js_ns" 'BEGIN {
  printf "ratio: rust is %.1fx faster than js (%.1f ns vs %.1f ns per feature evaluation)\n", j / r, r, j
  printf "ratio incl. building attributes from JSON: %.1fx (%.1f ns per evaluation)\n", j / ra, ra
}'
# Differential check of the condition language on random documents.
"$bin" conditions "$data" "${CONDITIONS:-100000}" >/dev/null
node "$here/diff_conditions.js" "$data" 2>/dev/null | sed 's/^/conditions diff: /'
exit "$js_status"
