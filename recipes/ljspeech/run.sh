#!/usr/bin/env bash
# LJSpeech (22.05 kHz, one speaker) at the Parallel WaveNet sizes: a 30-layer teacher and a
# 4-flow (10, 10, 10, 30) student. Meant for a GPU; see data/README.md for the corpus.
#   bash recipes/ljspeech/run.sh --data /path/to/LJSpeech-1.1 --device cuda
# Stages: 0 preprocess  1 teacher  2 teacher synthesis  3 distil  4 student synthesis  5 evaluate
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source=recipes/common.sh
source "${root}/recipes/common.sh"
conf="${root}/recipes/ljspeech/conf"
exp="exp/ljspeech"
data="downloads/LJSpeech-1.1"
format=ljspeech
parse_options "$@"
run_recipe
