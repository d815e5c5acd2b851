# Shared by every recipe's run.sh: stage selection and option parsing (Kaldi/ESPnet style).
#   --stage N / --stop_stage N   run stages N..M only
#   --exp DIR                    experiment root (default exp/<recipe>)
#   --data DIR                   corpus location (recipes that need one)
#   --overrides "k=v k2=v2"      config overrides for every stage that reads a config
#   --input PATH                 clip or saved log-mel (.npy) to synthesise in stages 2 and 4
#   --device cpu|cuda            training and synthesis device
#   --eval_args "..."            extra options of the evaluation stage (e.g. "--max-clips 2")
# shellcheck shell=bash
stage=0
stop_stage=100
overrides=""
device=""
override_args=()
device_args=()
synth_opts=()  # the words of synth_args and eval_args (strings a recipe may set)
eval_opts=()

parse_options() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --stage) stage="$2"; shift 2 ;;
            --stop_stage|--stop-stage) stop_stage="$2"; shift 2 ;;
            --exp) exp="$2"; shift 2 ;;
            --data) data="$2"; shift 2 ;;
            --overrides) overrides="$2"; shift 2 ;;
            --input) synth_input="$2"; shift 2 ;;
            --device) device="$2"; shift 2 ;;
            --eval_args|--eval-args) eval_args="${eval_args:-} $2"; shift 2 ;;
            -h|--help) sed -n '2,8p' "${BASH_SOURCE[0]}"; exit 0 ;;
            *) echo "unknown option: $1" >&2; exit 2 ;;
        esac
    done
    # the option strings split into words (and never glob-expanded: "k=[1,1]" stays as is)
    read -r -a override_args <<< "${overrides}"
    read -r -a synth_opts <<< "${synth_args:-}"
    read -r -a eval_opts <<< "${eval_args:-}"
    if [ -n "${device}" ]; then device_args=(--device "${device}"); fi
}

run_stage() {  # run_stage N "description": true when stage N is selected, and says so
    if [ "$1" -ge "${stage}" ] && [ "$1" -le "${stop_stage}" ]; then
        echo "=== stage $1: $2"
        return 0
    fi
    return 1
}

first_valid_features() {  # path of the first validation utterance's saved log-mel
    python -c 'import json, sys; d = sys.argv[1]; u = json.loads(open(d + "/valid.jsonl").readline()); print(d + "/" + u["mel"])' "$1"
}

run_recipe() {
    # Stages shared by all recipes; needs conf, exp, data, format; optional synth_input
    # (defaults to the first validation utterance's features), synth_args (e.g. --speaker 0)
    # and eval_args (e.g. --max-clips 20).
    : "${conf:?run_recipe needs conf}" "${format:?run_recipe needs format}"
    local teacher_ckpt="${exp}/teacher/checkpoints/best.pt"
    local student_ckpt="${exp}/student/checkpoints/best.pt"
    if run_stage 0 "preprocess ${data} (${format})"; then
        wavedistill preprocess --config "${conf}/teacher.yaml" --format "${format}" \
            --data "${data}" --out "${exp}/data" "${override_args[@]}"
    fi
    if run_stage 1 "train the teacher (maximum likelihood)"; then
        wavedistill train-teacher --config "${conf}/teacher.yaml" --data "${exp}/data" \
            --out "${exp}/teacher" "${device_args[@]}" "${override_args[@]}"
    fi
    local input="${synth_input:-}"
    if [ -z "${input}" ] && [ -f "${exp}/data/valid.jsonl" ]; then
        input="$(first_valid_features "${exp}/data")"
    fi
    if run_stage 2 "teacher synthesis (sequential, cached)"; then
        wavedistill synthesize --checkpoint "${teacher_ckpt}" --input "${input}" \
            --output "${exp}/synth/teacher.wav" "${device_args[@]}" "${synth_opts[@]}"
    fi
    if run_stage 3 "distil the student (KL to the teacher + spectral losses)"; then
        wavedistill distill --config "${conf}/student.yaml" --teacher "${teacher_ckpt}" \
            --data "${exp}/data" --out "${exp}/student" "${device_args[@]}" "${override_args[@]}"
    fi
    if run_stage 4 "student synthesis (one parallel pass)"; then
        wavedistill synthesize --checkpoint "${student_ckpt}" --input "${input}" \
            --output "${exp}/synth/student.wav" "${device_args[@]}" "${synth_opts[@]}"
    fi
    if run_stage 5 "evaluate the student against the teacher"; then
        wavedistill evaluate --checkpoint "${student_ckpt}" --data "${exp}/data" \
            --teacher "${teacher_ckpt}" --out "${exp}/report" "${device_args[@]}" "${eval_opts[@]}"
    fi
    echo "done: audio in ${exp}/synth, report in ${exp}/report; watch training: tensorboard --logdir ${exp}"
    if [ -z "${page_last:-}" ]; then listening_page; fi
}

listening_page() {  # a recipe's last line: the evaluation's listening page, when there is one
    if [ -f "${exp}/report/index.html" ]; then
        echo "listening page (open it in a web browser): ${exp}/report/index.html"
    fi
}
