#!/usr/bin/env bash
# Snapshots git refs for bench/ab_check.sh: each REF becomes .ab/NAME (NAME = REF without a
# leading "exp/"), a `git archive` of that commit.  Run it here, before the device call, and
# carry ".ab": the device machine gets the working tree, not the refs.
#   bench/ab_snapshot.sh main exp/sweep4 exp/merge-order
set -euo pipefail
cd "$(dirname "$0")/.."
for ref in "$@"; do
  dir=.ab/${ref#exp/}
  rm -rf "$dir" && mkdir -p "$dir"
  git archive "$ref" | tar -x -C "$dir"
  echo "$dir <- $ref ($(git rev-parse --short "$ref"))"
done
