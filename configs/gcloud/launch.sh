#!/usr/bin/env bash
# Multi-node training on Google Cloud GPU VMs with Composer's launcher, one container per node.
#
#   bash configs/gcloud/launch.sh create --project P --zone Z --nodes 2
#   bash configs/gcloud/launch.sh train  --project P --zone Z --nodes 2 --recipe configs/pretrain/1b.yaml \
#       --image REGISTRY/maxtoki:latest -- variables.data=s3://B/cells variables.vocab=s3://B/cells/vocab.json \
#       variables.save_folder=s3://B/runs/pretrain-1b
#   bash configs/gcloud/launch.sh delete --project P --zone Z --nodes 2
#
# More options: --gpus-per-node 8, --machine-type a3-highgpu-8g, --name-prefix maxtoki, --port 29500,
# --work-dir /mnt/disks/work, --work-disk-size 2000GB, and --dry-run, which prints every gcloud
# command instead of running it.
#
# Node 0 is the rendezvous master (reached by its internal DNS name). Every VM has a pd-ssd work disk,
# mounted at --work-dir by node_setup.sh, for what outgrows the boot disk: the console log of each node
# (logs/NODE.log), wandb's files (WANDB_DIR) and the streaming cache and checkpoint staging (TMPDIR).
# Credentials never appear on a command line: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
# AWS_SESSION_TOKEN, AWS_DEFAULT_REGION, S3_ENDPOINT_URL, WANDB_API_KEY and WANDB_ENTITY (those set in
# this shell) and WANDB_MODE (online unless set) go into a mode-600 env file that is copied to every VM
# and read by `docker run --env-file`. `train` exits non-zero naming each node that failed; rerunning
# it resumes from the recipe's save_folder (autoresume).
set -euo pipefail

usage() {
    awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
    exit 2
}

ACTION="${1:-}"
[[ "$ACTION" =~ ^(create|train|delete)$ ]] || usage
shift
PROJECT="" ZONE="" NODES=1 GPUS_PER_NODE=8 MACHINE="a3-highgpu-8g" PREFIX="maxtoki"
RECIPE="" IMAGE="" PORT=29500 WORK="/mnt/disks/work" WORK_DISK_SIZE="2000GB" DRY_RUN=0
OVERRIDES=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --project) PROJECT="$2"; shift 2 ;;
        --zone) ZONE="$2"; shift 2 ;;
        --nodes) NODES="$2"; shift 2 ;;
        --gpus-per-node) GPUS_PER_NODE="$2"; shift 2 ;;
        --machine-type) MACHINE="$2"; shift 2 ;;
        --name-prefix) PREFIX="$2"; shift 2 ;;
        --recipe) RECIPE="$2"; shift 2 ;;
        --image) IMAGE="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        --work-dir) WORK="$2"; shift 2 ;;
        --work-disk-size) WORK_DISK_SIZE="$2"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --) shift; OVERRIDES=("$@"); break ;;
        *) echo "launch.sh: unknown option $1" >&2; usage ;;
    esac
done
[[ -n "$PROJECT" && -n "$ZONE" ]] || { echo "launch.sh: --project and --zone are required" >&2; exit 2; }
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || { echo "launch.sh: --nodes must be a positive integer" >&2; exit 2; }
[[ "$WORK" == /* ]] || { echo "launch.sh: --work-dir must be an absolute path" >&2; exit 2; }

quote() {  # one shell word, single-quoted when it needs to be
    if [[ "$1" =~ ^[A-Za-z0-9_./:=@,+-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}

run() {  # a dry run prints the command instead
    if [[ "$DRY_RUN" == 1 ]]; then
        local words=() arg
        for arg in "$@"; do
            words+=("$(quote "$arg")")
        done
        echo "${words[*]}"
    else
        "$@"
    fi
}

node() { echo "${PREFIX}-$1"; }
MASTER="$(node 0).${ZONE}.c.${PROJECT}.internal"
ENV_NAMES=(AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_DEFAULT_REGION S3_ENDPOINT_URL
           WANDB_API_KEY WANDB_ENTITY WANDB_MODE)
SECRETS=" AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN WANDB_API_KEY "
WANDB_MODE="${WANDB_MODE:-online}"  # training alone defaults to offline; a cloud run is watched online
REMOTE_ENV_FILE="maxtoki.env"       # in the ssh user's home on every VM

case "$ACTION" in
    create)
        for ((rank = 0; rank < NODES; rank++)); do
            run gcloud compute instances create "$(node "$rank")" --project "$PROJECT" --zone "$ZONE" \
                --machine-type "$MACHINE" --maintenance-policy TERMINATE --boot-disk-size 500GB \
                --image-family common-cu124-ubuntu-2204-py310 --image-project deeplearning-platform-release \
                --create-disk "auto-delete=yes,device-name=maxtoki-work,size=$WORK_DISK_SIZE,type=pd-ssd" \
                --metadata "maxtoki-work-dir=$WORK" \
                --metadata-from-file "startup-script=$(dirname "$0")/node_setup.sh"
        done
        ;;
    train)
        [[ -n "$RECIPE" && -n "$IMAGE" ]] || { echo "launch.sh: train needs --recipe and --image" >&2; exit 2; }
        if [[ "$WANDB_MODE" == online && -z "${WANDB_API_KEY:-}" ]]; then
            echo "launch.sh: wandb logs online in cloud runs: export WANDB_API_KEY (or WANDB_MODE=offline)" >&2
            exit 2
        fi
        passed=()
        for name in "${ENV_NAMES[@]}"; do
            [[ -n "${!name:-}" ]] || continue  # an empty S3_ENDPOINT_URL would reach boto3, which refuses it
            if [[ "${!name}" == *$'\n'* ]]; then
                echo "launch.sh: $name spans lines; an env file cannot hold it" >&2
                exit 2
            fi
            passed+=("$name")
        done
        if [[ "$DRY_RUN" == 1 ]]; then
            shown=()
            for name in "${passed[@]}"; do
                if [[ "$SECRETS" == *" $name "* ]]; then
                    shown+=("$name=<secret>")
                else
                    shown+=("$(quote "$name=${!name}")")
                fi
            done
            echo "# $REMOTE_ENV_FILE (mode 600): ${shown[*]}"
            env_file="<env file>"
        else
            env_file="$(mktemp)"  # mode 600, and scp gives the copy the same mode
            trap 'rm -f "$env_file"' EXIT
            for name in "${passed[@]}"; do
                printf '%s=%s\n' "$name" "${!name}" >>"$env_file"  # a builtin: no process's argv holds a value
            done
        fi
        for ((rank = 0; rank < NODES; rank++)); do
            run gcloud compute scp "$env_file" "$(node "$rank"):$REMOTE_ENV_FILE" --project "$PROJECT" --zone "$ZONE" ||
                { echo "launch.sh: could not copy $REMOTE_ENV_FILE to $(node "$rank")" >&2; exit 1; }
        done
        work="$(printf '%q' "$WORK")"
        pids=()
        for ((rank = 0; rank < NODES; rank++)); do
            # every node runs the same container; Composer's launcher starts one process per GPU
            remote="set -o pipefail; mkdir -p $work/logs $work/tmp && sudo docker run --rm --gpus all --network host"
            remote+=" --ipc host --env-file $REMOTE_ENV_FILE -e TMPDIR=$work/tmp -e WANDB_DIR=$work/logs"
            remote+=" -v $work:$work $(printf '%q' "$IMAGE")"
            remote+=" composer --world_size $((NODES * GPUS_PER_NODE)) --node_rank $rank --master_addr $MASTER"
            remote+=" --master_port $PORT --nproc $GPUS_PER_NODE scripts/train.py $(printf '%q' "$RECIPE")"
            for override in "${OVERRIDES[@]}"; do
                remote+=" $(printf '%q' "$override")"
            done
            remote+=" 2>&1 | tee -a $work/logs/$(node "$rank").log"
            if [[ "$DRY_RUN" == 1 ]]; then
                run gcloud compute ssh "$(node "$rank")" --project "$PROJECT" --zone "$ZONE" --command "$remote"
            else
                gcloud compute ssh "$(node "$rank")" --project "$PROJECT" --zone "$ZONE" --command "$remote" &
                pids+=("$!")
            fi
        done
        if [[ "$DRY_RUN" == 0 ]]; then
            failed=()
            for ((rank = 0; rank < NODES; rank++)); do
                status=0
                wait "${pids[rank]}" || status=$?
                ((status == 0)) || failed+=("$(node "$rank") (exit $status)")
            done
            if ((${#failed[@]} > 0)); then
                printf -v list '%s, ' "${failed[@]}"
                echo "launch.sh: training failed on ${list%, } (each node's log: $WORK/logs/NODE.log on its VM)" >&2
                exit 1
            fi
        fi
        ;;
    delete)
        nodes=()
        for ((rank = 0; rank < NODES; rank++)); do
            nodes+=("$(node "$rank")")
        done
        run gcloud compute instances delete "${nodes[@]}" --project "$PROJECT" --zone "$ZONE" --quiet
        ;;
esac
