#!/usr/bin/env bash
# Demo on the two bundled CMU ARCTIC clips: a small teacher, a small student, synthesis of a
# bundled clip by both, evaluation. Minutes on 2 CPU cores. Stages:
#   0 preprocess data/arctic   1 train the teacher   2 teacher synthesis
#   3 distil the student       4 student synthesis   5 evaluate
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
source "${root}/recipes/common.sh"
conf="${root}/recipes/demo/conf"
exp="exp/demo"
data="${root}/data/arctic"
format=folder
synth_input="${data}/arctic_a0009.wav"
parse_options "$@"
run_recipe
