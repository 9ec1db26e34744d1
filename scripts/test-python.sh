#!/usr/bin/env bash
# The Python package's tests (pytest, python/tests), run by test.sh.
#
# Makes (once per requirements) the virtualenv target/py-stemflow with what the tests
# compare against and drive — LiberTEM and LiberTEM-live from PyPI (their UDFs, readers and
# Merlin control client), the readers that open stemflow's recordings (HyperSpy with
# RosettaSciIO, py4DSTEM, hdf5plugin for bitshuffle-LZ4), Dask, matplotlib, pytest — then installs the package exactly as a
# user does, `pip install ./python` (maturin builds the Rust extension in release mode into
# target/), and runs pytest. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-deps.sh
venv=target/py-stemflow
py=${STEMFLOW_PYTHON:-python3}
reqs="libertem-live[sim]==0.3.0 libertem==0.16.0 hyperspy==2.5.0 rosettasciio==0.15.0 py4DSTEM==0.14.18 hdf5plugin==7.1.0 dask[distributed] matplotlib pytest>=7"
marker="$venv/.stemflow-requirements"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$marker" 2>/dev/null)" != "$reqs" ]; then
  echo "test-python: making $venv ($reqs)" >&2
  rm -rf "$venv"
  "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  # shellcheck disable=SC2086  # the requirements are words
  "$venv/bin/pip" install -q $reqs
  echo "$reqs" > "$marker"
fi
echo "test-python: pip install ./python" >&2
"$venv/bin/pip" install -q ./python
cd python
# The pytest executable (not `python -m pytest`, which would put ./stemflow, the sources
# without the built extension, before the installed package). Two cores: the tests' own
# thread budget small (the engine takes one worker per core).
OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 exec "../$venv/bin/pytest" -q -p no:cacheprovider tests "$@"
