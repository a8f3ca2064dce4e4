"""Perturbation screens by value: what each perturbation does to a rank list, the embedding read-out recomputed
from single forward passes, the rank-matched null and its FDR, gene embeddings in varm, batched generation
equal to one prompt at a time, and the one-line refusals. A random tiny model (the mechanics do not depend on
training); that a trained stage-1 model finds planted drivers is tests/test_perturb_validation.py."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from maxtoki.analysis.perturbations import Mode, apply, parse_items, rank_in
from maxtoki.cli import main as cli_main
from maxtoki.vocab import Vocabulary


def cli(*argv):
    assert cli_main([str(a) for a in argv]) == 0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Simulated donors (young, middle and old), tokenized, and two random tiny models as HF directories: a
    stage-1 model and a stand-in for a stage-2 one."""
    import torch
    from transformers import LlamaForCausalLM

    from maxtoki.inference.export import write_model_directory
    from maxtoki.model.sizes import llama_config

    root = tmp_path_factory.mktemp("screen")
    cli("--quiet", "data", "simulate", "--out", root / "sim.h5ad", "--donors", 6, "--ages-per-donor", 3,
        "--cells-per-sample", 6, "--genes", 120, "--seed", 5)
    cli("--quiet", "data", "medians", root / "sim.h5ad", "--out", root / "m.json")
    cli("--quiet", "data", "vocab", "--medians", root / "m.json", "--out", root / "v.json", "--max-time", 100)
    cli("--quiet", "data", "tokenize", root / "sim.h5ad", "--vocab", root / "v.json", "--medians", root / "m.json",
        "--out", root / "cells", "--time-column", "age", "--keep-obs", "donor", "age_group",
        "--model-input-size", 24)
    vocab = Vocabulary.load(root / "v.json")
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config("tiny", len(vocab), 128, vocab.pad_id, vocab.bos_id, vocab.eos_id))
    model.config.maxtoki = {"objective": "pretrain"}
    write_model_directory(model.eval(), vocab, root / "stage1", "months")
    model.config.maxtoki = {"objective": "temporal"}
    write_model_directory(model.eval(), vocab, root / "stage2", "months")
    return root


def test_each_perturbation_moves_exactly_the_genes_it_names():
    cell = np.array([2, 10, 11, 12, 13, 14, 3], dtype=np.uint16)  # <bos> genes by rank <eos>

    def run(genes, kind, ranks=0, limit=32):
        changed = apply(cell, np.array(genes), Mode(kind, ranks), limit)
        return None if changed is None else changed.tolist()

    assert run([12], "inhibit") == [2, 10, 11, 13, 14, 12, 3]
    assert run([14], "inhibit") is None  # already the bottom gene
    assert run([13], "shift", 2) == [2, 10, 13, 11, 12, 14, 3]  # two ranks towards the top
    assert run([11], "shift", -2) == [2, 10, 12, 13, 11, 14, 3]
    assert run([11], "shift", 9) == [2, 11, 10, 12, 13, 14, 3]  # bounded by the top
    assert run([11], "shift", -9) == [2, 10, 12, 13, 14, 11, 3]  # and by the bottom
    assert run([99], "shift", 1) is None and run([99], "inhibit") is None  # not expressed
    assert run([12, 14], "delete") == [2, 10, 11, 13, 3]
    assert run([12, 99], "delete") is None  # a combination acts on cells that express all of its genes
    assert run([13, 99, 10], "overexpress", limit=7) == [2, 13, 99, 10, 11, 12, 3]  # in order; the bottom goes
    assert run([10, 12], "inhibit") == [2, 11, 13, 14, 10, 12, 3]
    assert run([10, 14], "shift", 1) == [2, 10, 11, 12, 14, 13, 3]  # 10 is already the top gene
    assert rank_in(cell, [10]) == 1 and rank_in(cell, [12, 14]) == 4 and rank_in(cell, [99]) == 6


def test_gene_combinations_are_parsed_and_refused_with_one_line(tiny_vocab):
    from maxtoki.errors import MaxtokiError

    a, b, c, d = tiny_vocab.genes[:4]
    assert parse_items([a, f"{a}+{b}", f"{b}+{c}+{d}", a], tiny_vocab) == [
        (tiny_vocab[a],), (tiny_vocab[a], tiny_vocab[b]), (tiny_vocab[b], tiny_vocab[c], tiny_vocab[d])]
    for bad, message in ((f"{a}+{b}+{c}+{d}", "joins 2 or 3 distinct genes"), (f"{a}+{a}", "joins 2 or 3 distinct"),
                         (f"{a}+ENSG_NOPE", "not in the model's vocabulary (first: ENSG_NOPE)")):
        with pytest.raises(MaxtokiError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_items([bad], tiny_vocab)


def test_null_genes_are_outside_the_panel_spread_over_the_ranks_and_matched_by_rank():
    from maxtoki.analysis.perturb_null import benjamini_hochberg, matched_null_shifts, null_items

    cell = np.array([2, *range(10, 50), 3])
    panel = np.array([10, 25, 49])
    rng = np.random.default_rng(0)
    nulls = null_items(cell, 1, 8, panel, np.array([60, 61, 62, 10]), False, rng)
    others = [g for g in cell[1:-1] if g not in panel]  # the 37 other genes, by rank
    assert len(nulls) == 8 and not set(g for (g,) in nulls) & set(panel.tolist())
    stretches = np.array_split(np.arange(37), 8)  # one null per eighth of their ranks
    assert all(others.index(g) in stretch for (g,), stretch in zip(nulls, stretches))
    with_absent = null_items(cell, 2, 8, panel, np.array([60, 61, 62, 10]), True, rng)
    absent = [item for item in with_absent if not set(item) & set(cell.tolist())]
    assert len(absent) == 2 and all(set(item) <= {60, 61, 62} for item in absent)
    pairs = [item for item in with_absent if item not in absent]
    assert all(abs(np.flatnonzero(cell == x)[0] - np.flatnonzero(cell == y)[0]) <= 2 for x, y in pairs)
    shifts = pd.DataFrame({"cell_id": ["c", "c"], "mode": ["delete"] * 2, "size": [1, 1], "rank": [3.0, 30.0],
                           "gene": ["g", "h"], "shift": [0.0, 0.0]})
    null = pd.DataFrame({"cell_id": ["c"] * 4 + ["d"], "mode": ["delete"] * 5, "size": [1] * 5,
                         "rank": [1.0, 4.0, 29.0, 40.0, 3.0], "shift": [0.1, 0.2, 0.3, 0.4, 9.9]})
    assert matched_null_shifts(shifts, null, "shift") == {("delete", "g"): [0.2, 0.1], ("delete", "h"): [0.3, 0.4]}
    adjusted = benjamini_hochberg(pd.Series([0.01, 0.04, np.nan, 0.03, 0.5]))
    np.testing.assert_allclose(adjusted.to_numpy(), [0.04, 0.16 / 3, np.nan, 0.16 / 3, 0.5])


def _pooled(model, tokens: np.ndarray, left_out, layer: int = -1) -> np.ndarray:
    """One cell alone through the model: its gene tokens' mean state at ``layer``, ``left_out`` genes excluded."""
    import torch

    with torch.no_grad():
        states = model(input_ids=torch.as_tensor(tokens[None].astype(np.int64)),
                       output_hidden_states=True).hidden_states[layer][0].numpy()
    keep = np.isin(tokens, np.asarray(left_out), invert=True)
    keep[[0, -1]] = False  # <bos>, <eos>
    return states[keep].mean(axis=0)


def _cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_the_embedding_screen_is_each_variant_alone_through_the_model(world):
    """Every shift of shifts.csv recomputed from one cell at a time: the goal-state shift between the centroids
    of all old and all young cells, the perturbed genes left out of both embeddings; perturbed_embeddings.h5ad
    holds the same vectors; p-values against the null perturbations of nulls.csv."""
    from transformers import LlamaForCausalLM

    from maxtoki.analysis.cells import load_cells
    from maxtoki.analysis.perturbations import Mode, apply

    cells = load_cells(str(world / "cells"), ["age_group"], time_column=None)
    vocab = cells.vocab
    old = cells.where((("age_group", "old"),))
    first, second = (vocab.token(g) for g in cells.input_ids[old[0]][1:3])
    out = world / "embedding-screen"
    cli("analyze", "perturb", "--checkpoint", world / "stage1", "--data", world / "cells", "--readout", "embedding",
        "--genes", first, second, f"{first}+{second}", "--modes", "delete", "overexpress", "inhibit", "shift",
        "--shift-ranks", 2, -3, "--start-state", "age_group=old", "--goal-state", "age_group=young",
        "--query-cells", 3, "--null-genes", 4, "--write-embeddings", "--batch-size", 5, "--out", out)
    shifts, nulls, effects = (pd.read_csv(out / f"{name}.csv") for name in ("shifts", "nulls", "effects"))
    summary = json.loads((out / "perturb.json").read_text())
    assert summary["readout"] == "embedding" and summary["query_cells"] == 3
    assert summary["state_cells"] == {"age_group=old": len(old), "age_group=young": len(cells.where(
        (("age_group", "young"),)))}
    assert set(shifts["mode"]) == {"delete", "overexpress", "inhibit", "shift+2", "shift-3"}
    model = LlamaForCausalLM.from_pretrained(world / "stage1").eval()
    centroid = {state: np.mean([_pooled(model, np.asarray(cells.input_ids[i]), []) for i in
                                cells.where((("age_group", state),))], axis=0) for state in ("old", "young")}
    embeddings = ad.read_h5ad(out / "perturbed_embeddings.h5ad")
    position = {cell_id: i for i, cell_id in enumerate(cells.obs.index)}
    modes = {"delete": Mode("delete"), "overexpress": Mode("overexpress"), "inhibit": Mode("inhibit"),
             "shift+2": Mode("shift", 2), "shift-3": Mode("shift", -3)}
    for row in shifts.itertuples():
        assert row.cell_id in set(cells.obs.index[old])
        cell = np.asarray(cells.input_ids[position[row.cell_id]])
        genes = [vocab[g] for g in row.gene.split("+")]
        variant = apply(cell, np.array(genes), modes[row.mode], cells.max_length)
        perturbed, original = _pooled(model, variant, genes), _pooled(model, cell, genes)
        towards_goal = _cos(perturbed, centroid["young"]) - _cos(original, centroid["young"])
        towards_start = _cos(perturbed, centroid["old"]) - _cos(original, centroid["old"])
        assert row.shift == pytest.approx(towards_goal - towards_start, abs=2e-5)
        assert row.cosine_shift == pytest.approx(1 - _cos(perturbed, original), abs=2e-5)
        stored = embeddings[f"{row.cell_id}:{row.mode}:{row.gene}"].obsm["X_maxtoki"][0]
        np.testing.assert_allclose(stored, perturbed, atol=2e-5)
    np.testing.assert_allclose(embeddings[shifts["cell_id"].iloc[0]].obsm["X_maxtoki"][0],
                               _pooled(model, np.asarray(cells.input_ids[position[shifts["cell_id"].iloc[0]]]), []),
                               atol=2e-5)
    # the nulls: genes outside the panel, every query cell and mode; each gene's p-value and FDR against them
    panel = {first, second}
    assert not any(set(g.split("+")) & panel for g in nulls["gene"])
    assert set(nulls["cell_id"]) == set(shifts["cell_id"]) and set(nulls["mode"]) == set(shifts["mode"])
    assert effects["p_value"].between(0, 1).all() and (effects["fdr"] >= effects["p_value"] - 1e-12).all()
    both = f"{first}+{second}"
    expressing = {g: sum(all(vocab[x] in cells.input_ids[position[c]] for x in g.split("+"))
                         for c in shifts["cell_id"].unique()) for g in (first, second, both)}
    assert effects.set_index(["mode", "gene"]).loc[("delete", both), "cells_expressing"] == expressing[both]
    assert (out / "perturb.png").exists() and not (out / "contexts.csv").exists()


@pytest.mark.parametrize("layer", [-1, 1])
def test_variants_run_from_where_they_differ_equal_each_variant_alone(world, layer):
    """The screen computes a variant only from its first changed position on (the cell's cached keys and
    values before it): every mode, combinations and an added gene, in batches mixing where they diverge, give
    each variant's embedding alone through the model, at the last layer and an inner one."""
    from transformers import LlamaForCausalLM

    from maxtoki.analysis.embedding_shift import EmbeddingReader

    vocab = Vocabulary.load(world / "v.json")
    model = LlamaForCausalLM.from_pretrained(world / "stage1").eval()
    genes = np.asarray(vocab.gene_ids[:40])
    cell = np.array([vocab.bos_id, *genes, vocab.eos_id])
    items = [(int(genes[i]),) for i in (0, 7, 20, 39)] + [(int(genes[3]), int(genes[30])), (int(vocab.gene_ids[50]),)]
    items.append((int(genes[0]), int(genes[30])))  # shifted up, the top gene stays before the first change
    variants, left_out = [], []
    for mode in (Mode("delete"), Mode("inhibit"), Mode("overexpress"), Mode("shift", 3), Mode("shift", -5)):
        for item in items:
            if (variant := apply(cell, np.array(item), mode, 48)) is not None:
                variants.append(variant)
                left_out.append(item)
    assert len(variants) == 27  # the absent gene only overexpressed, the top one not raised, the bottom one not lowered
    reader = EmbeddingReader(model, vocab, layer=layer, batch_size=7)
    shared = reader.pooled_variants(reader.prefix(cell), variants, left_out)
    alone = np.stack([_pooled(model, variant, list(genes), layer) for variant, genes in zip(variants, left_out)])
    np.testing.assert_allclose(shared, alone, atol=2e-5)


def test_the_time_read_out_keeps_its_shifts_and_gains_p_values(world):
    out = world / "time-screen"
    cli("analyze", "perturb", "--checkpoint", world / "stage2", "--data", world / "cells", "--donor-column",
        "donor", "--top-genes", 4, "--modes", "delete", "inhibit", "--query-cells", 3, "--null-genes", 3,
        "--time-scale", 1 / 12, "--out", out)
    effects, nulls = pd.read_csv(out / "effects.csv"), pd.read_csv(out / "nulls.csv")
    assert set(effects["mode"]) == {"delete", "inhibit"} and effects["p_value"].between(0, 1).all()
    assert len(nulls) and {"baseline", "shift", "rank"} <= set(nulls.columns)
    assert (out / "contexts.csv").exists()


def test_screens_refuse_what_they_cannot_do_with_one_line_and_write_nothing(world, capsys):
    out = world / "refused"
    common = ["analyze", "perturb", "--data", world / "cells", "--out", out]
    cases = [
        ((*common, "--checkpoint", world / "stage1", "--donor-column", "donor", "--time-scale", 1 / 12),
         "its time tokens were never trained", "--readout embedding"),
        ((*common, "--checkpoint", world / "stage1", "--readout", "embedding", "--start-state", "age_group=old",
          "--goal-state", "age_group=ancient"), "no cell has age_group=ancient (--goal-state); the values are: "
                                               "middle, old, young", None),
        ((*common, "--checkpoint", world / "stage1", "--readout", "embedding", "--goal-state", "age_group=young"),
         "--start-state and --goal-state go together", None),
        ((*common, "--checkpoint", world / "stage1", "--readout", "embedding", "--query-where", "donor=donor999"),
         "no cell matches donor=donor999: the query set is empty", None),
        ((*common, "--checkpoint", world / "stage1", "--readout", "embedding", "--genes", "ENSG_NOT_A_GENE"),
         "not in the model's vocabulary (first: ENSG_NOT_A_GENE)", None),
        ((*common, "--checkpoint", world / "stage1", "--readout", "embedding", "--layer", 7),
         "--layer 7: the model has layers 0 (token embeddings) to 2", None),
        ((*common, "--checkpoint", world / "stage2", "--donor-column", "donor", "--time-scale", 1 / 12,
          "--write-embeddings"), "--write-embeddings writes the perturbed cells' embeddings: it needs --readout "
                                 "embedding", None),
    ]
    for argv, message, also in cases:
        assert cli_main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert also is None or also in err
    assert not out.exists()


def test_embed_writes_gene_embeddings_to_varm_at_the_chosen_layer(world):
    """At layer 0 a gene's embedding is its token embedding, whatever the cells; at the last layer each gene's
    state averaged over the cells that hold it; genes no cell holds are NaN with 0 cells."""
    import torch
    from transformers import LlamaForCausalLM

    from maxtoki.analysis.cells import load_cells

    from maxtoki.data.cells.tokenize import tokenize_anndata

    model = LlamaForCausalLM.from_pretrained(world / "stage1").eval()
    vocab = Vocabulary.load(world / "v.json")
    sim = ad.read_h5ad(world / "sim.h5ad")
    counts = sim.X.tolil()
    counts[:, 0] = 0  # a gene no cell expresses
    sim.X = counts.tocsr()
    sim.var_names = ["NOT_IN_THE_VOCABULARY", *sim.var_names[1:]]
    sim.write_h5ad(world / "edited.h5ad")
    cli("embed", "--checkpoint", world / "stage1", "--data", world / "edited.h5ad", "--medians", world / "m.json",
        "--out", world / "layer0.h5ad", "--layer", 0)
    layer0 = ad.read_h5ad(world / "layer0.h5ad")
    assert layer0.var_names.tolist() == sim.var_names.tolist()
    as_embedded = tokenize_anndata(sim, vocab, str(world / "m.json"),
                                   model_input_size=128)  # the model's context: cells are embedded alone
    held = np.bincount(np.concatenate([c[1:-1] for c in as_embedded.input_ids]).astype(int), minlength=len(vocab))
    tokens = np.array([vocab[g] if g in vocab else 0 for g in layer0.var_names])
    held[0] = 0
    assert layer0.var["maxtoki_cells"].tolist() == held[tokens].tolist()
    weights = model.model.embed_tokens.weight.detach().numpy()
    expressed = held[tokens] > 0
    assert 0 < expressed.sum() < len(tokens)
    np.testing.assert_allclose(layer0.varm["X_maxtoki"][expressed], weights[tokens[expressed]], atol=1e-6)
    assert np.isnan(layer0.varm["X_maxtoki"][~expressed]).all()
    first = np.asarray(as_embedded.input_ids[0])
    np.testing.assert_allclose(layer0.obsm["X_maxtoki"][0], weights[first[1:-1]].mean(axis=0), atol=1e-6)
    cells = load_cells(str(world / "cells"), [], time_column=None)
    first = np.asarray(cells.input_ids[0])
    cli("embed", "--checkpoint", world / "stage1", "--data", world / "cells", "--out", world / "last.h5ad")
    last = ad.read_h5ad(world / "last.h5ad")
    gene = int(first[3])
    holding = [np.asarray(c) for c in cells.input_ids if gene in c[1:-1]]
    with torch.no_grad():
        by_hand = np.mean([model(input_ids=torch.as_tensor(c[None].astype(np.int64)), output_hidden_states=True)
                           .hidden_states[-1][0, int(np.flatnonzero(c == gene)[0])].numpy() for c in holding], axis=0)
    row = last.var_names.get_loc(vocab.token(gene))
    np.testing.assert_allclose(last.varm["X_maxtoki"][row], by_hand, atol=1e-5)
    assert last.var["maxtoki_cells"].iloc[row] == len(holding) and (last.var["maxtoki_cells"] > 0).all()


def test_batched_generation_gives_the_tokens_of_one_prompt_at_a_time(world):
    """16 prompts of different lengths, left-padded into one batch with the KV cache: greedy decoding gives
    exactly the tokens each prompt gives alone."""
    from transformers import LlamaForCausalLM

    from maxtoki.analysis.cells import load_cells
    from maxtoki.inference.generate import Sampling, generate_cells

    model = LlamaForCausalLM.from_pretrained(world / "stage2").eval()
    cells = load_cells(str(world / "cells"), [], time_column=None)
    vocab = cells.vocab
    prompts = [np.concatenate([cells.input_ids[i][:4 + i], [vocab.eos_id, vocab.boq_id, vocab.time_token(i % 5),
                                                         vocab.eoq_id]]) for i in range(16)]
    assert len({len(p) for p in prompts}) == 16
    greedy = Sampling(max_new_tokens=12)
    batched = generate_cells(model, prompts, vocab, greedy, batch_size=16)
    alone = [generate_cells(model, [p], vocab, greedy, batch_size=1)[0] for p in prompts]
    assert all(np.array_equal(a, b) for a, b in zip(batched, alone))
    assert len({tuple(a.tolist()) for a in alone}) > 1
