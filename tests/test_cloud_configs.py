"""Cloud job definitions: MosaicML platform run YAMLs (parsed by the mcli package itself, offline),
the GCP multi-node launcher (dry run: the exact commands), and shellcheck on every shell script."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MCLI = sorted(ROOT.glob("configs/mcli/*.yaml"))


def test_every_stage_and_size_has_a_run_definition():
    assert [p.stem for p in MCLI] == ["pretrain-1b", "pretrain-217m", "temporal-1b", "temporal-217m"]


@pytest.mark.parametrize("path", MCLI, ids=lambda p: p.stem)
def test_mcli_runs_parse_and_their_parameters_complete_a_valid_recipe(path, tmp_path):
    from llmfoundry.utils.config_utils import TRAIN_CONFIG_KEYS, TrainConfig, make_dataclass_and_log_config
    from mcli.models.run_config import FinalRunConfig, RunConfig

    from maxtoki.training import load_recipe

    run = FinalRunConfig.finalize_config(RunConfig.from_file(str(path)))
    stage, size = path.stem.split("-")
    assert run.name == f"maxtoki-{stage}-{size}" and run.compute["gpus"] % 8 == 0
    assert run.scheduling["resumable"] and any(i["integration_type"] == "wandb" for i in run.integrations)
    launch = shlex.split(run.command.strip().splitlines()[-1])
    assert launch == ["composer", "scripts/train.py", f"configs/{stage}/{size}.yaml", "/mnt/config/parameters.yaml"]
    (tmp_path / "parameters.yaml").write_text(yaml.safe_dump(run.parameters))  # where mcli mounts them
    cfg = load_recipe(str(ROOT / launch[2]), [str(tmp_path / "parameters.yaml")])
    _, train_cfg = make_dataclass_and_log_config(cfg, TrainConfig, TRAIN_CONFIG_KEYS, transforms="all")
    assert train_cfg.model["size"] == size and train_cfg.save_folder == run.parameters["variables"]["save_folder"]
    assert train_cfg.model["vocab"] == run.parameters["variables"]["vocab"] and train_cfg.autoresume
    if stage == "temporal":
        assert train_cfg.load_path == run.parameters["variables"]["pretrained"]


@pytest.mark.parametrize("path", MCLI, ids=lambda p: p.stem)
def test_mcli_runs_set_no_empty_variables(path):
    """An empty S3_ENDPOINT_URL reaches boto3 through Composer and streaming, which refuse it on AWS."""
    variables = yaml.safe_load(path.read_text()).get("env_variables") or {}
    assert all(str(value).strip() for value in variables.values()), variables


def test_an_empty_endpoint_variable_means_unset(monkeypatch):
    from composer.utils import S3ObjectStore

    from maxtoki import storage

    monkeypatch.setenv("S3_ENDPOINT_URL", "")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", " ")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with pytest.raises(ValueError, match="Invalid endpoint"):
        S3ObjectStore(bucket="bucket")  # what a cloud run hit before
    storage.drop_empty_endpoints()
    assert "S3_ENDPOINT_URL" not in os.environ and "AWS_ENDPOINT_URL_S3" not in os.environ
    assert S3ObjectStore(bucket="bucket").client.meta.endpoint_url == "https://s3.amazonaws.com"
    assert storage.endpoint_url() is None


def launcher(*argv):
    return subprocess.run(["bash", str(ROOT / "configs/gcloud/launch.sh"), *argv], capture_output=True, text=True)


def test_gcloud_dry_run_prints_the_exact_launch_commands():
    result = launcher("train", "--project", "proj", "--zone", "us-central1-a", "--nodes", "2", "--recipe",
                      "configs/pretrain/1b.yaml", "--image", "reg/maxtoki:1", "--dry-run", "--",
                      "variables.data=s3://b/cells", "run_name=donor's run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    for rank, line in enumerate(lines):
        words = shlex.split(line)
        assert words[:9] == ["gcloud", "compute", "ssh", f"maxtoki-{rank}", "--project", "proj", "--zone",
                             "us-central1-a", "--command"]
        remote = shlex.split(words[9])
        assert remote[:4] == ["docker", "run", "--rm", "--gpus"] and "reg/maxtoki:1" in remote
        assert remote[remote.index("reg/maxtoki:1") + 1:] == [
            "composer", "--world_size", "16", "--node_rank", str(rank), "--master_addr",
            "maxtoki-0.us-central1-a.c.proj.internal", "--master_port", "29500", "--nproc", "8",
            "scripts/train.py", "configs/pretrain/1b.yaml", "variables.data=s3://b/cells", "run_name=donor's run"]
        assert {"AWS_ACCESS_KEY_ID", "S3_ENDPOINT_URL", "WANDB_API_KEY"} <= {remote[i + 1] for i, w in
                                                                           enumerate(remote) if w == "-e"}
    created = launcher("create", "--project", "proj", "--zone", "z", "--nodes", "3", "--dry-run")
    assert [shlex.split(line)[4] for line in created.stdout.splitlines()] == ["maxtoki-0", "maxtoki-1", "maxtoki-2"]
    deleted = launcher("delete", "--project", "proj", "--zone", "z", "--nodes", "2", "--dry-run")
    assert deleted.stdout.split()[:6] == ["gcloud", "compute", "instances", "delete", "maxtoki-0", "maxtoki-1"]
    missing = launcher("train", "--project", "proj", "--zone", "z", "--dry-run")
    assert missing.returncode == 2 and "train needs --recipe and --image" in missing.stderr


def test_shell_scripts_pass_shellcheck():
    scripts = [*ROOT.glob("scripts/*.sh"), *ROOT.glob("configs/gcloud/*.sh"), ROOT / ".ci/run"]
    shellcheck = Path(sys.executable).parent / "shellcheck"
    result = subprocess.run([str(shellcheck), *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
