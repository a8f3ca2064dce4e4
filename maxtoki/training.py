"""The training entry point behind ``scripts/train.py``: recipe + overrides -> checks -> llm-foundry.

Training itself is llm-foundry's ``train`` (Composer's Trainer with its callbacks, FSDP,
automatic micro-batching, checkpointing and autoresume); this module adds the MaxToki components
to the registries and checks the recipe first, so a wrong size, a missing data path or a
vocabulary that does not match the data fails in seconds with a clear message, not after minutes.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

from maxtoki.errors import MaxtokiError

logger = logging.getLogger(__name__)


def parse_arguments(argv: list[str]) -> tuple[str, list[str]]:
    """``RECIPE [OVERLAY.yaml ...] [key=value ...]`` or ``-f RECIPE ...``."""
    argv = list(argv)
    if argv[:1] in (["-f"], ["--file"]):
        argv = argv[1:]
    if not argv or "=" in argv[0]:
        raise MaxtokiError("usage: composer scripts/train.py RECIPE.yaml [OVERLAY.yaml ...] [key=value ...] "
                           "(or -f RECIPE.yaml ...)")
    return argv[0], argv[1:]


def load_recipe(path: str, overrides: list[str]):
    """The recipe, then each overlay YAML (e.g. the parameters of a cloud run), then ``key=value`` overrides,
    merged in that order."""
    from omegaconf import OmegaConf

    overlays = [o for o in overrides if "=" not in o]
    for file in [path, *overlays]:
        if not Path(file).exists():
            raise MaxtokiError(f"{file}: no such recipe")
    try:
        cfg = OmegaConf.merge(*(OmegaConf.load(f) for f in [path, *overlays]),
                              OmegaConf.from_dotlist([o for o in overrides if "=" in o]))
        OmegaConf.resolve(cfg)
    except Exception as exc:  # omegaconf raises many kinds for bad YAML and bad interpolations
        raise MaxtokiError(f"{path}: {exc}") from None
    return cfg


def recipe_loaders(cfg) -> list[tuple[str, dict]]:
    """(key, loader) of the train loader and every eval loader a recipe sets (``eval_loader`` may be a list)."""
    evals = cfg.get("eval_loader") or cfg.get("eval_loaders") or []
    if not isinstance(evals, (list, tuple)) and type(evals).__name__ != "ListConfig":
        evals = [evals]
    loaders = [("train_loader", cfg.get("train_loader"))] + [("eval_loader", e) for e in evals]
    return [(key, loader) for key, loader in loaders if loader]


def localize_vocabularies(cfg) -> None:
    """An ``s3://`` vocabulary (e.g. the vocab.json every data output carries) is downloaded once, and the
    model and loaders are pointed at the local copy."""
    import tempfile

    from maxtoki import storage

    copies: dict[str, str] = {}

    def local(uri: str) -> str:
        if uri not in copies:
            copies[uri] = str(Path(tempfile.mkdtemp(prefix="maxtoki-vocab-")) / Path(uri).name)
            storage.download_file(uri, copies[uri])
        return copies[uri]

    sections = [cfg.get("model") or {}, *((loader.get("dataset") or {}) for _, loader in recipe_loaders(cfg))]
    for section in sections:
        if storage.is_remote(str(section.get("vocab", ""))):
            section["vocab"] = local(str(section["vocab"]))


def check_recipe(cfg) -> None:
    """Fail fast on what would otherwise fail after the model and loaders are built."""
    from maxtoki.data.loaders import read_data_manifest
    from maxtoki.model.sizes import SIZES
    from maxtoki.vocab import Vocabulary

    model = cfg.get("model") or {}
    if model.get("name") not in ("maxtoki_pretrain", "maxtoki_temporal"):
        raise MaxtokiError(f"model.name must be maxtoki_pretrain or maxtoki_temporal, not {model.get('name')!r}")
    if model.get("size") is None and not model.get("pretrained"):
        raise MaxtokiError(f"model.size is not set; choose one of {', '.join(SIZES)}, or give model.pretrained (a "
                           "model directory) to take its size")
    if model.get("size") is not None and model.get("size") not in SIZES:
        raise MaxtokiError(f"unknown model size {model.get('size')!r}; choose one of {', '.join(SIZES)}")
    vocab_path = model.get("vocab")
    if not vocab_path or not Path(vocab_path).exists():
        raise MaxtokiError(f"model.vocab {vocab_path!r}: no such file (set variables.vocab=PATH)")
    vocab = Vocabulary.load(vocab_path)
    expected = "maxtoki.cells" if model["name"] == "maxtoki_pretrain" else "maxtoki.paragraphs"
    for key, loader in recipe_loaders(cfg):
        location = str((loader.get("dataset") or {}).get("remote") or "")
        if not location:
            raise MaxtokiError(f"{key}.dataset.remote is not set (set variables.data=PATH or s3://...)")
        manifest = read_data_manifest(location)
        if manifest.get("kind") != expected:
            raise MaxtokiError(f"{key}: {location} holds {manifest.get('kind')} data; {model['name']} trains on "
                               f"{expected}")
        if manifest.get("vocabulary", {}).get("sha256") != vocab.sha256:
            raise MaxtokiError(f"{key}: {location} was made with the vocabulary {manifest['vocabulary']['path']}, "
                               f"which differs from model.vocab {vocab_path}")
    if model.get("pretrained"):
        from maxtoki.model.builders import check_pretrained_vocabulary

        check_pretrained_vocabulary(str(model["pretrained"]), vocab, vocab_path)
    save_folder = str(cfg.get("save_folder") or "")
    if save_folder and "://" in save_folder:
        from maxtoki import storage

        storage.list_keys(save_folder)  # an unreachable server or a missing bucket fails here, in seconds
    load_path = cfg.get("load_path")
    if model.get("pretrained") and load_path and cfg.get("load_weights_only"):
        logger.info(f"model.pretrained {model['pretrained']} gives the starting weights; load_path {load_path} "
                    "is not read")
        cfg["load_path"] = load_path = None
    if load_path and "://" in str(load_path):
        cfg["load_path"] = local_checked_load_path(str(load_path))
    elif load_path:
        if not Path(str(load_path)).exists():
            raise MaxtokiError(f"load_path {load_path}: no such checkpoint")
        if Path(str(load_path)).is_file():
            from maxtoki.checkpoint_files import check_checkpoint_file

            check_checkpoint_file(str(load_path), f"load_path {load_path}")


def assign_streaming_caches(cfg) -> None:
    """Each loader reading ``s3://`` data gets a cache of its own, named after the run's save folder
    (or run name) and the loader, unless the recipe names one."""
    from maxtoki import storage
    from maxtoki.data.loaders import read_data_manifest, streaming_cache

    run = str(cfg.get("save_folder") or cfg.get("run_name") or "")
    for index, (key, loader) in enumerate(recipe_loaders(cfg)):
        dataset = loader.get("dataset") or {}
        remote = str(dataset.get("remote") or "")
        if storage.is_remote(remote) and not dataset.get("local"):
            dataset["local"] = streaming_cache(remote, read_data_manifest(remote), f"{run} {key} {index}")


def first_rank_of_node() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def local_checked_load_path(uri: str) -> str:
    """A remote ``load_path``, downloaded once per node and checked like a local one before Composer
    loads it (it is downloaded either way); the checked copy is what the run loads."""
    import hashlib

    from maxtoki import storage
    from maxtoki.checkpoint_files import fetch_checked_checkpoint, wait_for_file

    resolved = storage.resolve_checkpoint(uri)
    identity = hashlib.sha256(f"{resolved} {storage.object_identity(resolved)}".encode()).hexdigest()[:16]
    local = os.path.join(storage.local_cache_root(), "checkpoints", identity, resolved.rsplit("/", 1)[-1])
    if os.path.exists(local):
        return local
    if first_rank_of_node():
        os.makedirs(os.path.dirname(local), exist_ok=True)
        fetch_checked_checkpoint(resolved, local, f"load_path {uri}")
    else:
        wait_for_file(local, CHECKPOINT_FETCH_TIMEOUT_S, f"load_path {uri}")
    return local


CHECKPOINT_FETCH_TIMEOUT_S = 2 * 3600


def fetch_checked_autoresume_checkpoint(save_folder: str) -> None:
    """The checkpoint that ``latest-rank0.pt.symlink`` names in a remote save folder, fetched to the local
    path where Composer's autoresume looks first and checked there: a damaged or missing one is refused
    instead of loaded, or instead of silently starting over.

    Composer reads that local path (``./s3:/bucket/prefix/latest-rank0.pt``) as the remote folder's latest
    checkpoint, so a copy left there by an earlier run is removed first: the bucket is the truth.
    """
    from maxtoki import storage
    from maxtoki.checkpoint_files import fetch_checked_checkpoint

    local = os.path.join(save_folder, "latest-rank0.pt")
    if os.path.lexists(local):
        os.remove(local)
    link = f"{save_folder.rstrip('/')}/latest-rank0.pt.symlink"
    if not storage.object_exists(link):
        return  # a first run: nothing to resume
    target = storage.resolve_checkpoint(link)
    advice = (f"delete it and write the name of the previous checkpoint in {link} (or delete {link} to start "
              "over)")
    if not storage.object_exists(target):
        raise MaxtokiError(f"{link} names {target}, which is not on the object store (an upload cut short); "
                           f"write the name of the previous checkpoint in {link} (or delete it to start over)")
    os.makedirs(os.path.dirname(local), exist_ok=True)
    try:
        fetch_checked_checkpoint(target, local, f"autoresume checkpoint {target}")
    except MaxtokiError as exc:
        raise MaxtokiError(f"{exc}. Autoresume would load it: {advice}") from None


def check_recipe_keys(cfg) -> None:
    """A misspelled key would otherwise stop llm-foundry with a traceback (top level) or a TypeError
    deep inside the model's construction: name it, and the closest valid key."""
    import difflib
    import inspect

    from llmfoundry.utils.config_utils import TRAIN_CONFIG_KEYS
    from streaming import StreamingDataset

    from maxtoki.data.loaders import DATASET_KEYS
    from maxtoki.model.composer_model import _RecipeModel

    model_keys = {"name", *inspect.signature(_RecipeModel.__init__).parameters} - {"self"}
    sections = [("", list(cfg), set(TRAIN_CONFIG_KEYS)),
                ("model.", list(cfg.get("model") or {}), model_keys)]
    dataset_keys = set(DATASET_KEYS) | set(inspect.signature(StreamingDataset.__init__).parameters) - {"self"}
    for key, loader in recipe_loaders(cfg):
        sections.append((f"{key}.dataset.", list(loader.get("dataset") or {}), dataset_keys))
    for prefix, keys, known in sections:
        for key in keys:
            if key not in known:
                close = difflib.get_close_matches(str(key).lstrip("+~"), sorted(known), n=1, cutoff=0.6)
                hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(sorted(known))}"
                raise MaxtokiError(f"unknown recipe key {prefix}{key}{hint}")


def remove_unfinished_checkpoints(save_folder: str) -> list[str]:
    """Checkpoints newer than the one ``latest-rank0.pt`` points to were cut short by a crash (the link
    moves only after a save completes); autoresume would refuse to run beside them, so they go."""
    latest = Path(save_folder) / "latest-rank0.pt"
    if not latest.is_symlink():
        return []
    match = re.search(r"ba(\d+)", os.readlink(latest))
    if not match:
        return []
    removed = []
    for path in Path(save_folder).glob("ep*-ba*-rank*.pt"):
        batch = re.search(r"-ba(\d+)-", path.name)
        if batch and int(batch.group(1)) > int(match.group(1)):
            path.unlink()
            removed.append(path.name)
    if removed:
        logger.info(f"removed checkpoints of an interrupted save: {', '.join(sorted(removed))}")
    return removed


def storage_outage(exc: BaseException) -> str | None:
    """The object-store failure behind an exception raised by training, if any (Composer re-raises its
    uploader's errors as they are, or as a RuntimeError when the check for an uploaded checkpoint fails)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                                  "ConnectionClosedError", "ObjectStoreTransientError") or \
                str(exc).startswith("Failed to check if checkpoint files upload finish"):
            return str(exc)
        exc = exc.__cause__ or exc.__context__
    return None


# botocore waits rand(0, 1) * min(0.05 * 2**i, 20) s before retry i of a refused connection: 21 attempts give an
# upload about two minutes (median 123 s, 1st percentile 77 s); 12 gave 33 s, and as little as 12 s
UPLOAD_ATTEMPTS = "21"


EXPECTED_WARNINGS = ("The tokenizer was not provided", "The shift_labels argument was set to False")


def quiet_expected_warnings() -> None:
    """Silence warnings that describe this design, not a problem: genes are tokens already (no
    tokenizer), the losses shift labels themselves, and llm-foundry imports pkg_resources."""
    import warnings

    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
    logging.getLogger("composer.models.huggingface").addFilter(
        lambda record: not record.getMessage().startswith(EXPECTED_WARNINGS))


def train_from_recipe(recipe: str, overrides: list[str] = ()):
    """Check and run a recipe; returns Composer's closed ``Trainer`` after training (for notebooks and tests), or
    None when autoresume finds the run already finished."""
    from maxtoki.model.read_out_scale import resolve_read_out_scale
    from maxtoki.storage import drop_empty_endpoints

    drop_empty_endpoints()
    cfg = load_recipe(recipe, list(overrides))
    localize_vocabularies(cfg)
    check_recipe(cfg)
    resolve_read_out_scale(cfg)
    assign_streaming_caches(cfg)
    save_folder = cfg.get("save_folder")
    if cfg.get("autoresume") and save_folder and "://" not in str(save_folder):
        remove_unfinished_checkpoints(str(save_folder))
        latest = Path(str(save_folder)) / "latest-rank0.pt"
        if latest.is_file():
            from maxtoki.checkpoint_files import check_checkpoint_file

            try:
                check_checkpoint_file(latest)
            except MaxtokiError as exc:
                target = os.readlink(latest) if latest.is_symlink() else latest.name
                raise MaxtokiError(f"{exc}. Autoresume would load it: delete {target} and point "
                                   f"latest-rank0.pt at the previous checkpoint in {save_folder} (or remove the "
                                   "link to start over)") from None
    elif cfg.get("autoresume") and save_folder:
        if first_rank_of_node():
            fetch_checked_autoresume_checkpoint(str(save_folder))
        from maxtoki.remote_checkpoints import unlinked_remote_checkpoints

        unlinked = unlinked_remote_checkpoints(str(save_folder))
        if unlinked and not cfg.get("save_overwrite"):
            # autoresume starts from the linked checkpoint; the run passes these again and must replace them
            cfg["save_overwrite"] = True
            logger.info(f"{save_folder} holds checkpoints uploaded but never linked as latest (the run stopped "
                        f"first): {', '.join(unlinked)}; resuming from the linked one, this run replaces them")
    if save_folder and "://" in str(save_folder):
        if cfg.get("callbacks") is None:
            cfg["callbacks"] = {}
        cfg["callbacks"]["link_checkpoints_promptly"] = {}  # not 30 s idle after the last upload
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("AWS_MAX_ATTEMPTS", UPLOAD_ATTEMPTS)  # checkpoint uploads ride out a short outage
    quiet_expected_warnings()
    from llmfoundry.command_utils import train

    import maxtoki.model.registry  # noqa: F401  (registers the models and loaders)

    check_recipe_keys(cfg)
    try:
        trainer = train(cfg)
    except ValueError as exc:
        if "is less than or equal to the elapsed training duration" not in str(exc):
            raise
        logger.info(f"the run in {save_folder} has already trained for max_duration ({cfg.get('max_duration')}); "
                    "nothing to do (raise max_duration to train on, or give another save_folder)")
        return None
    except Exception as exc:
        from maxtoki.data.loaders import TrainingDataUnreachable

        if isinstance(exc, TrainingDataUnreachable):
            raise MaxtokiError(f"lost the object store while reading training data ({exc}); rerun the same "
                               "command to resume") from None
        outage = storage_outage(exc)
        if outage is None:
            raise
        raise MaxtokiError(f"lost the object store during training ({outage}). The checkpoint that "
                           f"{save_folder}/latest-rank0.pt names was uploaded whole; when the store is back, rerun "
                           "the same command to resume from it") from None
    trainer.close()  # finishes uploads and loggers; state stays readable
    if "wandb" in sys.modules:
        import wandb

        wandb.teardown()  # waits for wandb's writer process: the run file is complete on return
    return trainer


def main(argv: list[str]) -> int:
    from maxtoki.console import show_notices
    from maxtoki.runtime import keep_freed_memory

    show_notices()
    keep_freed_memory()
    try:
        train_from_recipe(*parse_arguments(argv))
    except MaxtokiError as exc:
        print(f"maxtoki: error: {exc}", file=sys.stderr)
        return 2
    return 0
