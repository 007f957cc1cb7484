#!/usr/bin/env bash
# The long run of the property tests that feed every parser of outside
# input arbitrary and mutated bytes (the `fuzz_*` tests beside each parser:
# registry files, tarballs, metadata terms, ETF bodies, versions and
# requirements, request paths, the config, manifests). CI runs each with a
# short default; this runs them with CASES cases each (default 20000).
# A failure prints the smallest input proptest found: turn it into a
# regression test beside the parser.
set -euo pipefail
cd "$(dirname "$0")/.."
CASES="${CASES:-20000}"
echo "fuzz: $CASES cases per property"
PROPTEST_CASES="$CASES" cargo test --locked --lib fuzz_ -- --test-threads=2
