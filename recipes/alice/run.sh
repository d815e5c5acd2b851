#!/usr/bin/env bash
# The bundled voice (data/alice, Festival kal reading Alice in Wonderland, 16 kHz), end to end on
# 2 CPU cores in under an hour, with the settings chosen by the ablations in docs/ablations.md.
# Stages:
#   0 preprocess   1 teacher   2 teacher synthesis   3 distillation   4 student synthesis
#   5 evaluation of the student, the teacher and Griffin-Lim on all 20 held-out utterances
#      and on an unseen speaker (the two bundled ARCTIC clips)
#   6 copy the models into the package (wavedistill/store/weights, or $SHIP_DIR), as the shipped defaults
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source=recipes/common.sh
source "${root}/recipes/common.sh"
conf="${root}/recipes/alice/conf"
exp="exp/alice"
data="${root}/data/alice/wavs"
format=folder
synth_input="${root}/data/alice/wavs/alice_021.flac"  # a held-out sentence, 3.2 s
eval_args="--max-clips 20 --teacher-seconds 0.5"
parse_options "$@"
page_last=1  # the listening page is printed after the stages below
run_recipe
if run_stage 5 "evaluate on an unseen speaker (the two bundled ARCTIC clips)"; then
    wavedistill preprocess --config "${conf}/teacher.yaml" --format folder \
        --data "${root}/data/arctic" --out "${exp}/arctic" "${override_args[@]}"
    wavedistill evaluate --checkpoint "${exp}/student/checkpoints/best.pt" \
        --teacher "${exp}/teacher/checkpoints/best.pt" --data "${exp}/arctic" --split all \
        --out "${exp}/report_arctic" "${device_args[@]}" "${eval_opts[@]}"
fi
if run_stage 6 "ship the models (inference copies of best.pt into wavedistill/store/weights)"; then
    wavedistill ship --teacher "${exp}/teacher/checkpoints/best.pt" \
        --student "${exp}/student/checkpoints/best.pt" ${SHIP_DIR:+--out-dir "${SHIP_DIR}"}
fi
listening_page
