#!/usr/bin/env bash
# Any folder of audio files (searched recursively; any format soundfile reads), one speaker.
# Copy this folder, edit conf/*.yaml (sample rate, hop, model sizes), then:
#   bash recipes/template/run.sh --data /path/to/audio --exp exp/mine
# Stages: 0 preprocess  1 teacher  2 teacher synthesis  3 distil  4 student synthesis  5 evaluate
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source=recipes/common.sh
source "${root}/recipes/common.sh"
conf="${root}/recipes/template/conf"
exp="exp/template"
data=""
format=folder
parse_options "$@"
[ -n "${data}" ] || { echo "give the audio folder with --data DIR" >&2; exit 2; }
run_recipe
