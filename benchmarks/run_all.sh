#!/usr/bin/env bash
# Every figure in benchmarks/RESULTS.md, from one command. Run it on an idle machine: the
# scripts record the load average and RESULTS.md flags a busy one. About 15 minutes on 2 CPU cores.
#
#   benchmarks/run_all.sh              # CPU (the issue's targets are for a 2-core CPU)
#   DEVICE=cuda benchmarks/run_all.sh  # the same on a GPU (the app picks the GPU by itself)
set -euo pipefail
cd "$(dirname "$0")/.."
device="${DEVICE:-cpu}"
out=benchmarks/results
mkdir -p "$out"

python benchmarks/bench.py --device "$device" --weights brats-demo --json "$out/bench.json"
python benchmarks/ablate.py --device "$device" --json "$out/ablate.json"
status=0
python benchmarks/load.py --json "$out/load.json" || status=$?  # 1 = a check failed: still reported
python benchmarks/big_images.py --json "$out/big_images.json"
python benchmarks/volume_cli.py --json "$out/volume_cli.json"  # against c9dfdcb, in a temporary git worktree
python benchmarks/report.py --update benchmarks/RESULTS.md "$out/bench.json" "$out/ablate.json" "$out/load.json" \
  "$out/big_images.json" "$out/volume_cli.json"
echo "updated the tables in benchmarks/RESULTS.md (from $out/*.json)"
exit "$status"
