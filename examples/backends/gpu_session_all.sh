#!/usr/bin/env bash
# Issue 16 in ONE device call (~9.5 min): the two stages of gptq_session.sh back to back, with every
# precision of every backend (re-measured since qtrace tears CUPTI down after each profiler session):
#   run(command="OUT=$OUT bash examples/backends/gpu_session_all.sh", carry=[".whl", ".whl-gptq"])
set -u
export OUT=${OUT:-/tmp/qtrace-gptq}
DEADLINE=230 bash examples/backends/gptq_session.sh prepare
P_CLS=fp16,int8,nf4,torchao-int8wo,torchao-w8a8,torchao-int4,torchao-fp8,gptq-int4,awq-int4,gptq-int4-triton \
P_GEN=fp16,int8,nf4,torchao-int8wo,torchao-int4,torchao-fp8,gptq-int4,awq-int4,gptq-int4-triton \
CLS_LIMIT=170 GEN_LIMIT=150 DEADLINE=330 bash examples/backends/gptq_session.sh profile
