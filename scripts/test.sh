#!/usr/bin/env bash
# The whole test suite (real openslide, real zarr stores, real dask.distributed processes, real torch models).
source "$(dirname "$0")/env.sh"
exec python -m pytest -q -ra --durations=15 "$@"
