#!/usr/bin/env bash
# Proof on known densities: AR(4) sources whose entropy rate is known exactly, a Gaussian-head
# teacher and a mixture-of-logistics teacher trained on them by maximum likelihood, a student
# distilled from each, and a table of how far every model is from the truth (nats/sample):
#   teacher NLL on held-out audio minus the exact entropy rate   (target < 0.01)
#   KL(student || source) on the student's own samples           (target < 0.02)
# printed and written to <exp>/results.json. About 6 minutes on 2 CPU cores.
# Stages: 0 sources (training and held-out)  1 teachers  2 students  3 measure
#   bash recipes/synthetic/run.sh [--exp exp/synthetic] [--stage N] [--stop_stage M]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
# shellcheck source=recipes/common.sh
source "${root}/recipes/common.sh"
conf="${root}/recipes/synthetic/conf"
exp="exp/synthetic"
parse_options "$@"
# The models are tiny: one thread per process is fastest, and keeps a shared machine usable.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

# teacher head : source kind : student noise
runs=("gaussian:ar:gaussian" "mol:ar-logistic:logistic")

for run in "${runs[@]}"; do
    IFS=: read -r head kind noise <<< "${run}"
    dir="${exp}/${head}"
    if run_stage 0 "${kind} source: 16 training clips and 4 held-out clips of 8 s"; then
        wavedistill make-synthetic --kind "${kind}" --out "${dir}/data" --seconds 8 --clips 16 --seed 0
        wavedistill make-synthetic --kind "${kind}" --out "${dir}/test" --seconds 8 --clips 4 --seed 1
    fi
    if run_stage 1 "${head} teacher (maximum likelihood)"; then
        wavedistill train-teacher --config "${conf}/teacher_${head}.yaml" --data "${dir}/data" \
            --out "${dir}/teacher" "${device_args[@]}" "${override_args[@]}"
    fi
    if run_stage 2 "${noise} student distilled from the ${head} teacher"; then
        wavedistill distill --config "${conf}/student_${noise}.yaml" \
            --teacher "${dir}/teacher/checkpoints/best.pt" --data "${dir}/data" \
            --out "${dir}/student" "${device_args[@]}" "${override_args[@]}"
    fi
done
if run_stage 3 "measure every model against its source"; then
    wavedistill known-density --exp "${exp}" ${device:+--device "${device}"}
fi
