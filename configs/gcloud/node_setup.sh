#!/usr/bin/env bash
# Startup script of every training VM (passed by launch.sh create), run as root at each boot. The Deep
# Learning VM image has the NVIDIA driver, Docker and the NVIDIA container toolkit; this checks the GPUs
# and mounts the work disk (formatted on first boot only) at the directory named by the instance's
# maxtoki-work-dir metadata, where launch.sh keeps logs, wandb's files and the streaming cache. `docker
# run` pulls the training image; for a private registry, authenticate root's Docker once, e.g.
#   gcloud compute ssh NODE --command "sudo gcloud auth configure-docker REGION-docker.pkg.dev --quiet"
set -euo pipefail
/opt/deeplearning/install-driver.sh || true   # idempotent: installs the driver on first boot only
nvidia-smi --query-gpu=name,memory.total --format=csv
WORK="$(curl -fsS -H 'Metadata-Flavor: Google' \
    http://metadata.google.internal/computeMetadata/v1/instance/attributes/maxtoki-work-dir)"
DISK=/dev/disk/by-id/google-maxtoki-work
blkid "$DISK" >/dev/null || mkfs.ext4 -q -m 0 -E lazy_itable_init=0,lazy_journal_init=0,discard "$DISK"
mkdir -p "$WORK"
mountpoint -q "$WORK" || mount -o discard,defaults "$DISK" "$WORK"
chmod 1777 "$WORK"   # the ssh user writes the logs; the containers run as root
