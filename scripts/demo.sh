#!/usr/bin/env bash
# The main job on the embedded default: synthesize a multi-stain kidney slide and run the default job on it.
source "$(dirname "$0")/env.sh"
exec wsi-pipeline demo "$@"
