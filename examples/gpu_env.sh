# Sourced by the GPU visit scripts (not run): the host's Python and the carried wheels.
#   use_carried_wheels "bitsandbytes, msgspec"    # modules the visit needs; LOG must be set
# Sets PY (the host's torch venv, else python3) and PYTHONPATH: when one of the modules is missing,
# the wheels in .whl/ go into /tmp/site, which then comes first on PYTHONPATH (see ../shared/gpu/README.md).
export PYTHONUNBUFFERED=1 QTRACE_CACHE=/tmp/qtrace-cache TOKENIZERS_PARALLELISM=false
PY=${PY:-/opt/torch/.venv/bin/python3}
[ -x "$PY" ] || PY=python3
use_carried_wheels() {
  if ! "$PY" -c "import $1" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      2>&1 | tee -a "$LOG"
    export PYTHONPATH=/tmp/site:$PWD
  else
    export PYTHONPATH=$PWD
  fi
}
