#!/usr/bin/env bash
# Multi-node training on Google Cloud GPU VMs with Composer's launcher, one container per node.
#
#   bash configs/gcloud/launch.sh create --project P --zone Z --nodes 2
#   bash configs/gcloud/launch.sh train  --project P --zone Z --nodes 2 --recipe configs/pretrain/1b.yaml \
#       --image REGISTRY/maxtoki:latest -- variables.data=s3://B/cells variables.vocab=s3://B/cells/vocab.json \
#       variables.save_folder=s3://B/runs/pretrain-1b
#   bash configs/gcloud/launch.sh delete --project P --zone Z --nodes 2
#
# --dry-run prints the exact commands instead of running them. Node 0 is the rendezvous master
# (reached by its internal DNS name). S3 and wandb settings are passed from this shell's
# AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, S3_ENDPOINT_URL, WANDB_API_KEY
# into each container (a dry run prints their names, not their values). Rerunning `train` after
# a failure resumes from the recipe's save_folder (autoresume).
set -euo pipefail

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

ACTION="${1:-}"
[[ "$ACTION" =~ ^(create|train|delete)$ ]] || usage
shift
PROJECT="" ZONE="" NODES=1 GPUS_PER_NODE=8 MACHINE="a3-highgpu-8g" PREFIX="maxtoki"
RECIPE="" IMAGE="" PORT=29500 DRY_RUN=0
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
        --dry-run) DRY_RUN=1; shift ;;
        --) shift; OVERRIDES=("$@"); break ;;
        *) echo "launch.sh: unknown option $1" >&2; usage ;;
    esac
done
[[ -n "$PROJECT" && -n "$ZONE" ]] || { echo "launch.sh: --project and --zone are required" >&2; exit 2; }
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || { echo "launch.sh: --nodes must be a positive integer" >&2; exit 2; }

quote() {  # one shell word, single-quoted when it needs to be
    if [[ "$1" =~ ^[A-Za-z0-9_./:=@,+-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}

run() {
    if [[ "$DRY_RUN" == 1 ]]; then
        local words=()
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
ENV_NAMES=(AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_DEFAULT_REGION S3_ENDPOINT_URL WANDB_API_KEY)

case "$ACTION" in
    create)
        for ((rank = 0; rank < NODES; rank++)); do
            run gcloud compute instances create "$(node "$rank")" --project "$PROJECT" --zone "$ZONE" \
                --machine-type "$MACHINE" --maintenance-policy TERMINATE --boot-disk-size 500GB \
                --image-family common-cu124-ubuntu-2204-py310 --image-project deeplearning-platform-release \
                --metadata-from-file "startup-script=$(dirname "$0")/node_setup.sh"
        done
        ;;
    train)
        [[ -n "$RECIPE" && -n "$IMAGE" ]] || { echo "launch.sh: train needs --recipe and --image" >&2; exit 2; }
        WORLD_SIZE=$((NODES * GPUS_PER_NODE))
        ENV_FLAGS=""
        for name in "${ENV_NAMES[@]}"; do
            ENV_FLAGS+=" -e $name"
        done
        for ((rank = 0; rank < NODES; rank++)); do
            # every node runs the same container; Composer's launcher starts one process per GPU
            REMOTE="docker run --rm --gpus all --network host --ipc host${ENV_FLAGS} $(printf '%q' "$IMAGE")"
            REMOTE+=" composer --world_size $WORLD_SIZE --node_rank $rank --master_addr $MASTER --master_port $PORT"
            REMOTE+=" --nproc $GPUS_PER_NODE scripts/train.py $(printf '%q' "$RECIPE")"
            for override in "${OVERRIDES[@]}"; do
                REMOTE+=" $(printf '%q' "$override")"
            done
            if [[ "$DRY_RUN" == 1 ]]; then
                run gcloud compute ssh "$(node "$rank")" --project "$PROJECT" --zone "$ZONE" --command "$REMOTE"
            else
                env_prefix=""
                for name in "${ENV_NAMES[@]}"; do
                    [[ -z "${!name:-}" ]] || env_prefix+="$name=$(printf '%q' "${!name}") "
                done
                gcloud compute ssh "$(node "$rank")" --project "$PROJECT" --zone "$ZONE" \
                    --command "${env_prefix}${REMOTE}" &
            fi
        done
        [[ "$DRY_RUN" == 1 ]] || wait
        ;;
    delete)
        nodes=()
        for ((rank = 0; rank < NODES; rank++)); do
            nodes+=("$(node "$rank")")
        done
        run gcloud compute instances delete "${nodes[@]}" --project "$PROJECT" --zone "$ZONE" --quiet
        ;;
esac
