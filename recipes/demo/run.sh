#!/usr/bin/env bash
# Demo on the bundled voice (data/alice: 108 sentences of Festival's kal voice, 16 kHz): a small
# teacher and student trained for a few minutes each on 2 CPU cores, synthesis of a held-out
# sentence by both, and an evaluation on all 20 held-out sentences beside Griffin-Lim. Stages:
#   0 preprocess   1 train the teacher   2 teacher synthesis
#   3 distil the student   4 student synthesis   5 evaluate
# recipes/alice trains the same voice for an hour with the settings chosen by ablation.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source=recipes/common.sh
source "${root}/recipes/common.sh"
conf="${root}/recipes/demo/conf"
exp="exp/demo"
data="${root}/data/alice/wavs"
format=folder
synth_input="${root}/data/alice/wavs/alice_021.flac"  # a held-out sentence, 3.2 s
eval_args="--max-clips 20"
parse_options "$@"
run_recipe
