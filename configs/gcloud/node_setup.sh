#!/usr/bin/env bash
# Startup script of every training VM (passed by launch.sh create): the Deep Learning VM image has
# the NVIDIA driver, Docker and the NVIDIA container toolkit; this checks the GPUs and lets the
# default user run containers. Pull the training image once the VM is up:
#   gcloud compute ssh NODE --command "docker pull REGISTRY/maxtoki:latest"
set -euo pipefail
/opt/deeplearning/install-driver.sh || true   # idempotent: installs the driver on first boot only
nvidia-smi --query-gpu=name,memory.total --format=csv
usermod -aG docker "$(getent passwd 1000 | cut -d: -f1)" || true
