#!/usr/bin/env bash
# One device call on 2026-12-02: issue 14's CUPTI probe, then issue 16's 7B classify part.
#   run(command="OUT=$OUT bash examples/gpu_visit_2026_12_02a.sh", carry=[".whl"], timeout_s=600)
set -u
START=$(date +%s)
OUT=$OUT/lean bash examples/lean/cupti_session.sh
LEFT=$(( 560 - ($(date +%s) - START) ))
OUT=$OUT/backends PART=classify DEADLINE=$(( LEFT - 70 )) bash examples/backends/gpu_session_v4.sh
