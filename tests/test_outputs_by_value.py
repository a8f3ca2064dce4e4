"""What the inference commands write, recomputed in the test from the model itself: predict time's read-out and
scores, embed's pooling, export-hf of a stage-2 checkpoint with RoPE scaling, stage 2 started from an imported
model, and the same commands on s3:// giving what they give on local copies."""

from __future__ import annotations

import json
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from maxtoki import storage
from maxtoki.cli import main as cli_main
from maxtoki.data.paragraphs.cell_store import CellStore
from maxtoki.vocab import Vocabulary

ROOT = Path(__file__).resolve().parent.parent
TEMPORAL = str(ROOT / "configs/temporal/tiny-cpu.yaml")
CONTEXT = 256  # the random models' context: as stage 1 of the tiny recipes


def cli(*argv) -> None:
    assert cli_main([str(a) for a in argv]) == 0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Simulated donors as cells, training paragraphs and evaluation prompts, and a random tiny model imported
    with import-hf (a save_pretrained directory and its vocabulary)."""
    from transformers import LlamaForCausalLM

    from maxtoki.model.sizes import llama_config

    root = tmp_path_factory.mktemp("by_value")
    cli("data", "simulate", "--out", root / "sim.h5ad", "--donors", 8, "--ages-per-donor", 3, "--cells-per-sample", 4,
        "--genes", 80, "--seed", 4)
    cli("data", "medians", root / "sim.h5ad", "--out", root / "m.json")
    cli("data", "vocab", "--medians", root / "m.json", "--out", root / "v.json", "--max-time", 100)
    cli("data", "tokenize", root / "sim.h5ad", "--vocab", root / "v.json", "--medians", root / "m.json",
        "--out", root / "cells", "--time-column", "age", "--group-columns", "donor", "--keep-obs", "cell_type",
        "--model-input-size", 24)
    split = ["--split", "train=0.5,test=0.5", "--time-scale", 1 / 12, "--min-timepoints", 2, "--max-timepoints", 3]
    cli("data", "paragraphs", root / "cells", "--out", root / "p", "--num-examples", 200, *split)
    cli("data", "paragraphs", root / "cells", "--out", root / "eval", "--num-examples", 60, "--eval", *split)
    vocab = Vocabulary.load(root / "v.json")
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config("tiny", len(vocab), CONTEXT, vocab.pad_id, vocab.bos_id, vocab.eos_id))
    model.config.maxtoki = {"objective": "temporal"}  # a stand-in for a stage-2 model exported elsewhere
    model.save_pretrained(root / "released")
    cli("import-hf", root / "released", "--vocab", root / "v.json", "--time-unit", "years", "--out", root / "model")
    return root, vocab


def test_predict_time_reports_the_naive_baseline_and_scores_per_held_out_donor(world, tmp_path, capsys):
    """The naive baseline by cell type and the per-donor table agree with what predictions.csv and the training
    paragraphs say."""
    root, _ = world
    capsys.readouterr()
    cli("predict", "time", "--checkpoint", root / "model", "--data", root / "eval/test", "--train-data",
        root / "p/train", "--baseline-columns", "cell_type", "--out", tmp_path / "pred")
    printed = capsys.readouterr().out
    metrics = json.loads((tmp_path / "pred/metrics.json").read_text())
    table = pd.read_csv(tmp_path / "pred/predictions.csv")

    # the naive baseline: the most common training time of the query's cell type, minus the last context time
    cells = CellStore(str(root / "cells"))
    cell_type = np.array([str(cells[i]["cell_type"]) for i in range(len(cells))])
    trained = {(int(c), int(t)) for e in CellStore(str(root / "p/train")) for c, t in zip(e["cell_indices"],
                                                                                             e["times"])}
    expected = []
    for e in (e for e in CellStore(str(root / "eval/test")) if e["task"] == 1):
        times = pd.Series([t for c, t in trained if cell_type[c] == cell_type[int(e["cell_indices"][-1])]])
        counts = times.value_counts()
        expected.append(min(counts.index[counts == counts.max()]) - int(e["times"][-2]))
    np.testing.assert_array_equal(table["most_common_time_timelapse"], expected)
    assert metrics["baseline_most_common_time_fit"] == {"columns": ["cell_type"], "kinds": 2,
                                                        "queries_of_unseen_kinds": 0}
    assert "baseline: most common time of kind (cell_type)" in printed

    # per donor: the paragraphs are grouped by donor; each held-out donor's median predicted time at each time
    test_donors = json.loads((root / "eval/splits.json").read_text())["groups"]["test"]
    points = pd.read_csv(tmp_path / "pred/per_donor.csv")
    assert sorted(points["donor"].unique()) == sorted(set(table["donor"])) and set(table["donor"]) <= set(test_donors)
    assert metrics["per_donor"]["donors"] == points["donor"].nunique() and metrics["per_donor"]["points"] == len(points)
    implied = table["context_time"] + table["predicted_timelapse"]
    medians = implied.groupby([table["donor"], table["true_time"]]).median()
    np.testing.assert_allclose(points.set_index(["donor", "true_time"])["model"], medians.loc[
        list(points.set_index(["donor", "true_time"]).index)], rtol=1e-6)
    assert metrics["per_donor"]["model"]["mae"] == pytest.approx(float(np.mean(np.abs(
        points["model"] - points["true_time"]))))
    assert f"Per donor: the median predicted time of each held-out donor's cells at each of its times " \
           f"({metrics['per_donor']['donors']} donors, {len(points)} donor-times)" in printed


def hf_model(path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(path).eval()


def test_predict_time_equals_the_read_out_of_the_logits_and_the_scores_recompute(world):
    root, vocab = world
    cli("predict", "time", "--checkpoint", root / "model", "--data", root / "eval/test", "--train-data",
        root / "p/train", "--out", root / "pred")
    table = pd.read_csv(root / "pred/predictions.csv")
    metrics = json.loads((root / "pred/metrics.json").read_text())
    prompts = [e for e in CellStore(str(root / "eval/test")) if int(e["task"]) == 1]
    assert len(table) == len(prompts) > 10

    model = hf_model(root / "model")
    numeric = {i: float(token) for token, i in vocab.token_to_id.items() if token.lstrip("-").isdigit()}
    times = np.array(list(numeric.values()))
    numeric = np.array(list(numeric))
    expected, argmax = [], []
    with torch.no_grad():
        for prompt in prompts:
            logits = model(input_ids=torch.as_tensor(prompt["prompt_ids"].astype(np.int64))[None]).logits[0, -1]
            at_eoq = logits.double().numpy()[numeric]
            p = np.exp(at_eoq - at_eoq.max())
            p /= p.sum()  # the softmax renormalised over the numeric tokens
            expected.append(float(p @ times))
            argmax.append(times[np.argmax(p)])
    np.testing.assert_allclose(table["predicted_timelapse"], expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(table["argmax_timelapse"], argmax)
    assert table["true_timelapse"].tolist() == [int(e["timelapse"]) for e in prompts]

    training = [float(e["timelapse"]) for e in CellStore(str(root / "p/train")) if int(e["task"]) == 1]
    np.testing.assert_allclose(table["training_mean_timelapse"], np.mean(training))
    true = table["true_timelapse"].to_numpy(dtype=float)
    columns = {"model": "predicted_timelapse", "model_argmax": "argmax_timelapse",
               "baseline_training_mean": "training_mean_timelapse",
               "baseline_most_common_time": "most_common_time_timelapse",
               "baseline_linear": "linear_baseline_timelapse", "baseline_ceiling": "ceiling_timelapse"}
    for key, column in columns.items():
        predicted = table[column].to_numpy(dtype=float)
        error = predicted - true
        assert metrics[key]["mae"] == pytest.approx(np.mean(np.abs(error))), key
        assert metrics[key]["rmse"] == pytest.approx(np.sqrt(np.mean(error ** 2))), key
        if np.ptp(predicted) > 0:
            centred = (predicted - predicted.mean(), true - true.mean())
            pearson = (centred[0] @ centred[1]) / np.sqrt((centred[0] @ centred[0]) * (centred[1] @ centred[1]))
            assert metrics[key]["pearson_r"] == pytest.approx(pearson), key
        else:  # a constant has no correlation
            assert metrics[key]["pearson_r"] is None or np.isnan(metrics[key]["pearson_r"]), key


def test_an_embedding_is_the_mean_last_hidden_state_of_the_cells_gene_tokens(world):
    root, vocab = world
    cli("embed", "--checkpoint", root / "model", "--data", root / "cells", "--out", root / "embedded.h5ad")
    embedded = ad.read_h5ad(root / "embedded.h5ad")
    cells = list(CellStore(str(root / "cells")))
    assert embedded.obs_names.tolist() == [c["cell_id"] for c in cells]
    model = hf_model(root / "model")
    for row in (0, len(cells) // 2, len(cells) - 1):
        ids = torch.as_tensor(cells[row]["input_ids"].astype(np.int64))[None]
        with torch.no_grad():
            states = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
        genes = torch.as_tensor(vocab.is_gene)[ids[0]]
        assert 0 < genes.sum() == len(ids[0]) - 2  # all but <bos> and <eos>
        np.testing.assert_allclose(embedded.obsm["X_maxtoki"][row], states[genes].mean(0).numpy(), rtol=1e-4,
                                   atol=1e-5)


def test_embed_reads_gene_ids_from_a_var_column(world):
    """The same cells with symbols in the index and Ensembl IDs in var['ensembl'] give the same embeddings."""
    root, _ = world
    adata = ad.read_h5ad(root / "sim.h5ad")
    adata.var["ensembl"] = adata.var_names
    adata.var_names = [f"SYMBOL{i}" for i in range(adata.n_vars)]
    adata.write_h5ad(root / "symbols.h5ad")
    common = ["--checkpoint", root / "model", "--medians", root / "m.json"]
    cli("embed", *common, "--data", root / "sim.h5ad", "--out", root / "by-index.h5ad")
    cli("embed", *common, "--data", root / "symbols.h5ad", "--gene-id-column", "ensembl", "--out",
        root / "by-column.h5ad")
    by_index, by_column = ad.read_h5ad(root / "by-index.h5ad"), ad.read_h5ad(root / "by-column.h5ad")
    assert np.isfinite(by_index.obsm["X_maxtoki"]).all()
    np.testing.assert_array_equal(by_column.obsm["X_maxtoki"], by_index.obsm["X_maxtoki"])


def test_a_model_loaded_once_gives_what_its_directory_gives_to_predict_generate_and_embed(world, tmp_path):
    """load_model, then the library functions with the loaded model: the same files as the commands given the
    model directory; a loaded model is checked against the data's vocabulary as a checkpoint path is."""
    from maxtoki.errors import MaxtokiError
    from maxtoki.inference import embed, generate, load_model, predict_time
    from maxtoki.inference.loading import model_for

    root, vocab = world
    model, loaded_vocab = load_model(root / "model")
    assert loaded_vocab.sha256 == vocab.sha256 and not model.training
    predict_time(model, str(root / "eval/test"), tmp_path / "loaded-pred", train_data=str(root / "p/train"))
    cli("predict", "time", "--checkpoint", root / "model", "--data", root / "eval/test", "--train-data",
        root / "p/train", "--out", tmp_path / "pred")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "loaded-pred/predictions.csv"),
                                  pd.read_csv(tmp_path / "pred/predictions.csv"))
    generate(model, str(root / "eval/test"), tmp_path / "loaded-gen", evaluate=False)
    cli("generate", "--checkpoint", root / "model", "--data", root / "eval/test", "--out", tmp_path / "gen",
        "--no-evaluate")
    assert (tmp_path / "loaded-gen/tokens.jsonl").read_text() == (tmp_path / "gen/tokens.jsonl").read_text()
    embed(model, str(root / "sim.h5ad"), tmp_path / "loaded.h5ad", medians=str(root / "m.json"), vocab=loaded_vocab)
    cli("embed", "--checkpoint", root / "model", "--medians", root / "m.json", "--data", root / "sim.h5ad",
        "--out", tmp_path / "path.h5ad")
    np.testing.assert_array_equal(ad.read_h5ad(tmp_path / "loaded.h5ad").obsm["X_maxtoki"],
                                  ad.read_h5ad(tmp_path / "path.h5ad").obsm["X_maxtoki"])
    other = Vocabulary.build(vocab.genes[:-1], max_time=100)
    for given in (model, root / "model"):
        with pytest.raises(MaxtokiError, match="the model was trained with another vocabulary than the data's"):
            model_for(given, other)


def temporal_overrides(root: Path, save_folder: str, batches: int) -> list[str]:
    """Stage 2 from the imported model as docs/training.md shows it (``model.pretrained=DIR load_path=null``)."""
    return [f"variables.data={root / 'p/train'}", f"variables.vocab={root / 'v.json'}",
            f"model.pretrained={root / 'model'}", "load_path=null", f"save_folder={save_folder}",
            # not documented for users: a learning rate of 0 keeps the weights comparable, a few batches (each
            # saved) keep the run to seconds, and the in-memory logger lets the test read which batches ran
            "optimizer.lr=0", f"max_duration={batches}ba", "save_interval=1ba", f"eval_interval={batches}ba",
            "eval_subset_num_batches=1", "global_train_batch_size=4", "device_train_microbatch_size=4",
            "loggers={inmemory: {}}"]


@pytest.fixture(scope="module")
def stage2(world, tmp_path_factory):
    from maxtoki.training import train_from_recipe

    root, _ = world
    run = tmp_path_factory.mktemp("stage2") / "run"
    trainer = train_from_recipe(TEMPORAL, temporal_overrides(root, str(run), 2))
    return trainer, run


def test_stage2_from_an_imported_model_with_lr_0_keeps_its_weights_exactly(world, stage2):
    root, _ = world
    trainer, _ = stage2
    assert int(trainer.state.timestamp.batch) == 2
    imported = hf_model(root / "model").state_dict()
    trained = trainer.state.model.model.state_dict()
    assert trained.keys() == imported.keys()
    for name, value in imported.items():
        assert torch.equal(trained[name], value), name


def test_export_hf_of_a_stage2_checkpoint_keeps_logits_and_rope_scaling(world, stage2, tmp_path):
    from omegaconf import OmegaConf

    root, _ = world
    trainer, run = stage2
    cli("export-hf", "--checkpoint", run / "latest-rank0.pt", "--vocab", root / "v.json", "--time-unit", "years",
        "--out", tmp_path / "hf")
    recipe = OmegaConf.to_container(OmegaConf.load(TEMPORAL).model.rope_scaling)
    metadata = json.loads((tmp_path / "hf/maxtoki.json").read_text())
    assert metadata["rope_scaling"] == recipe and metadata["max_position_embeddings"] == 1024
    assert metadata["objective"] == "temporal" and metadata["time_unit"] == "years"
    exported = hf_model(tmp_path / "hf")
    assert exported.config.rope_scaling == recipe
    ids = torch.randint(4, 80, (2, 900), generator=torch.Generator().manual_seed(0))  # beyond the 256 of stage 1
    with torch.no_grad():
        expected = trainer.state.model.model.eval()(input_ids=ids).logits
        logits = exported(input_ids=ids).logits
        unscaled = hf_model(root / "model")(input_ids=ids).logits
    assert torch.equal(logits, expected)
    assert not torch.allclose(logits[:, 300:], unscaled[:, 300:], atol=1e-3)  # the scaling is in effect


# ---- s3:// against local copies, on a real S3-compatible server process


BUCKET = "s3://maxtoki-test/by-value"


def download_prefix(uri: str, local: Path) -> Path:
    for key in storage.list_keys(uri):
        relative = key.split(uri.split("/", 3)[3] + "/", 1)[1]
        (local / relative).parent.mkdir(parents=True, exist_ok=True)
        storage.download_file(f"s3://{uri.split('/')[2]}/{key}", str(local / relative))
    return local


@pytest.fixture(scope="module")
def on_s3(world, stage2, s3_server, tmp_path_factory):
    """Cells and evaluation prompts written to S3 by the commands, the stage-2 checkpoint uploaded as Composer
    leaves it there (``latest-rank0.pt.symlink`` naming it), and local copies of all three."""
    root, _ = world
    _, run = stage2
    local = tmp_path_factory.mktemp("local_copies")
    cli("data", "tokenize", root / "sim.h5ad", "--vocab", root / "v.json", "--medians", root / "m.json", "--out",
        f"{BUCKET}/cells", "--time-column", "age", "--group-columns", "donor", "--model-input-size", 24)
    cli("data", "paragraphs", f"{BUCKET}/cells", "--out", f"{BUCKET}/eval", "--eval", "--num-examples", 30,
        "--time-scale", 1 / 12, "--min-timepoints", 2, "--max-timepoints", 3)
    checkpoint = (run / "latest-rank0.pt").resolve()
    with open(checkpoint, "rb") as handle:
        storage.upload_bytes(f"{BUCKET}/run/{checkpoint.name}", handle.read())
    key = storage.split_s3_uri(f"{BUCKET}/run/{checkpoint.name}")[1]
    storage.upload_bytes(f"{BUCKET}/run/latest-rank0.pt.symlink", key.encode())
    download_prefix(f"{BUCKET}/cells", local / "cells")
    download_prefix(f"{BUCKET}/eval", local / "eval")
    storage.download_file(f"{BUCKET}/run/{checkpoint.name}", str(local / "latest-rank0.pt"))
    return local


@pytest.mark.s3
def test_predict_time_on_s3_equals_local_copies(on_s3, tmp_path):
    cli("predict", "time", "--checkpoint", f"{BUCKET}/run/latest-rank0.pt", "--data", f"{BUCKET}/eval",
        "--out", tmp_path / "remote")
    cli("predict", "time", "--checkpoint", on_s3 / "latest-rank0.pt", "--data", on_s3 / "eval",
        "--out", tmp_path / "local")
    remote, local = (pd.read_csv(tmp_path / d / "predictions.csv") for d in ("remote", "local"))
    assert len(remote) > 5
    pd.testing.assert_frame_equal(remote, local)
    metrics = [json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("remote", "local")]
    for entry in metrics:
        entry.pop("baselines_from")  # names the data's location
    assert metrics[0] == metrics[1]


@pytest.mark.s3
def test_embed_on_s3_equals_local_copies(on_s3, tmp_path):
    cli("embed", "--checkpoint", f"{BUCKET}/run/latest-rank0.pt", "--data", f"{BUCKET}/cells",
        "--out", tmp_path / "remote.h5ad")
    cli("embed", "--checkpoint", on_s3 / "latest-rank0.pt", "--data", on_s3 / "cells", "--out", tmp_path / "local.h5ad")
    remote, local = ad.read_h5ad(tmp_path / "remote.h5ad"), ad.read_h5ad(tmp_path / "local.h5ad")
    assert remote.n_obs == 8 * 3 * 4 and remote.obs_names.tolist() == local.obs_names.tolist()
    np.testing.assert_array_equal(remote.obsm["X_maxtoki"], local.obsm["X_maxtoki"])


@pytest.mark.s3
def test_generate_on_s3_equals_local_copies(on_s3, tmp_path):
    for name, checkpoint, data in (("remote", f"{BUCKET}/run/latest-rank0.pt", f"{BUCKET}/eval"),
                                   ("local", on_s3 / "latest-rank0.pt", on_s3 / "eval")):
        cli("generate", "--checkpoint", checkpoint, "--data", data, "--out", tmp_path / name, "--max-new-tokens", 6)
    remote, local = ((tmp_path / d / "tokens.jsonl").read_text() for d in ("remote", "local"))
    assert remote.count("\n") > 5 and remote == local


def stale_copy_beside_a_remote_run(run: Path, folder: str, cwd: Path) -> Path:
    """The run's second checkpoint in the bucket as ``folder``'s latest, and its first as a local copy where
    Composer looks for the latest checkpoint of ``folder`` (``./s3:/bucket/prefix/latest-rank0.pt``)."""
    key = storage.split_s3_uri(f"{folder}/ep0-ba2-rank0.pt")[1]
    storage.upload_bytes(f"{folder}/ep0-ba2-rank0.pt", (run / "ep0-ba2-rank0.pt").read_bytes())
    storage.upload_bytes(f"{folder}/latest-rank0.pt.symlink", key.encode())
    stale = cwd / folder.replace("s3://", "s3:/") / "latest-rank0.pt"
    stale.parent.mkdir(parents=True)
    stale.write_bytes((run / "ep0-ba1-rank0.pt").read_bytes())
    return stale


@pytest.mark.s3
def test_a_stale_local_copy_of_the_remote_checkpoint_is_replaced_before_resuming(stage2, s3_server, tmp_path,
                                                                                 monkeypatch):
    from maxtoki.training import fetch_checked_autoresume_checkpoint

    _, run = stage2
    monkeypatch.chdir(tmp_path)
    stale = stale_copy_beside_a_remote_run(run, f"{BUCKET}/replaced-run", tmp_path)
    assert stale.read_bytes() != (run / "ep0-ba2-rank0.pt").read_bytes()
    fetch_checked_autoresume_checkpoint(f"{BUCKET}/replaced-run")
    assert stale.read_bytes() == (run / "ep0-ba2-rank0.pt").read_bytes()


@pytest.mark.slow  # a whole resumed training run on S3 (about 17 s here); the test above checks the step it relies on
@pytest.mark.s3
def test_a_stale_local_copy_of_the_remote_checkpoint_is_never_loaded(world, stage2, s3_server, tmp_path,
                                                                     monkeypatch):
    """Composer reads ./s3:/bucket/prefix/latest-rank0.pt as the remote run's latest checkpoint; a copy left there
    (here the run's first checkpoint) must not be what a rerun resumes from: the bucket's (the second) is."""
    from composer.loggers import InMemoryLogger

    from maxtoki.training import train_from_recipe

    root, _ = world
    _, run = stage2
    folder = f"{BUCKET}/stale-run"
    monkeypatch.chdir(tmp_path)
    stale_copy_beside_a_remote_run(run, folder, tmp_path)
    trainer = train_from_recipe(TEMPORAL, temporal_overrides(root, folder, 3))
    logger = next(d for d in trainer.logger.destinations if isinstance(d, InMemoryLogger))
    assert [int(t.batch) for t, _ in logger.data["loss/train/total"]] == [2]  # resumed at batch 2, not 1
    assert "ep0-ba3-rank0.pt" in [k.rsplit("/", 1)[-1] for k in storage.list_keys(folder)]
    assert os.environ.get("S3_ENDPOINT_URL") == s3_server


def test_generate_writes_the_anndata_its_tokens_say_and_sampling_is_seeded(world, tmp_path):
    """generated_cells.h5ad holds each cell of tokens.jsonl by the documented rule (1 for the top gene, falling
    linearly by rank); the same --seed gives the same cells, another seed and greedy decoding other ones."""
    root, vocab = world

    def generate(name, *options):
        cli("generate", "--checkpoint", root / "model", "--data", root / "eval/test", "--out", tmp_path / name,
            "--max-new-tokens", 8, "--no-evaluate", *options)
        return (tmp_path / name / "tokens.jsonl").read_text()

    first, again = generate("a", "--sample", "--seed", 3), generate("b", "--sample", "--seed", 3)
    other, greedy = generate("c", "--sample", "--seed", 4), generate("d")
    assert first == again and first != other and first != greedy
    cells = [json.loads(line) for line in first.splitlines()]
    adata = ad.read_h5ad(tmp_path / "a" / "generated_cells.h5ad")
    assert adata.n_obs == len(cells) > 3 and list(adata.var_names) == vocab.genes
    for row, cell in enumerate(cells):
        genes = [vocab.token(t) for t in cell if vocab.is_gene[t]]
        expected = np.zeros(adata.n_vars, dtype=np.float32)
        expected[[adata.var_names.get_loc(g) for g in genes]] = (len(genes) - np.arange(len(genes))) / len(genes)
        np.testing.assert_allclose(adata.X[row].toarray().ravel(), expected, rtol=1e-6)
        assert adata.obs["generated_genes"].iloc[row] == len(genes)
