#!/usr/bin/env bash
# VCTK (multi-speaker, 48 kHz resampled to 24 kHz) with a speaker embedding in teacher and
# student. See data/README.md for the corpus.
#   bash recipes/vctk/run.sh --data /path/to/VCTK-Corpus --device cuda
# Stages: 0 preprocess  1 teacher  2 teacher synthesis  3 distil  4 student synthesis  5 evaluate
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source=recipes/common.sh
source "${root}/recipes/common.sh"
conf="${root}/recipes/vctk/conf"
exp="exp/vctk"
data="downloads/VCTK-Corpus"
format=vctk
synth_args="--speaker 0"
parse_options "$@"
run_recipe
