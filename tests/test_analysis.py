"""The analyses' mechanics, with a random tiny model on simulated donors: perturbations change exactly the
tokens they should, the cached-context read-out equals full prompts, pairs are age-matched with contexts
from other control donors, the estimator recovers a planted shift, and bad input is refused.
(tests/test_analysis_validation.py shows a trained model recovering planted effects.)"""

import json

import numpy as np
import pandas as pd
import pytest

from maxtoki.analysis.age_acceleration import AccelerationOptions, PairArrays, bootstrap, estimate
from maxtoki.analysis.perturb import delete, overexpress
from maxtoki.cli import main as cli_main
from maxtoki.vocab import Vocabulary


def cli(*argv):
    assert cli_main([str(a) for a in argv]) == 0


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """Simulated donors (4 of 12 with the disease), tokenized, and a random tiny model as an HF directory."""
    import torch
    from transformers import LlamaForCausalLM

    from maxtoki.inference.export import write_model_directory
    from maxtoki.model.sizes import llama_config

    root = tmp_path_factory.mktemp("analysis")
    cli("data", "simulate", "--out", root / "sim.h5ad", "--donors", 12, "--disease-donors", 4, "--ages-per-donor", 3,
        "--cells-per-sample", 6, "--genes", 120, "--age-acceleration", 60, "--seed", 2)
    cli("data", "medians", root / "sim.h5ad", "--out", root / "m.json")
    cli("data", "vocab", "--medians", root / "m.json", "--out", root / "v.json", "--max-time", 100)
    cli("data", "tokenize", root / "sim.h5ad", "--vocab", root / "v.json", "--medians", root / "m.json", "--out",
        root / "cells", "--time-column", "age", "--keep-obs", "donor", "condition", "cell_type",
        "--model-input-size", 32)
    vocab = Vocabulary.load(root / "v.json")
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config("tiny", len(vocab), 128, vocab.pad_id, vocab.bos_id, vocab.eos_id))
    write_model_directory(model.eval(), vocab, root / "model", "months")
    return root


def test_perturbations_change_exactly_the_rank_list():
    cell = np.array([2, 10, 11, 12, 13, 3], dtype=np.uint16)  # <bos> genes <eos>
    assert delete(cell, 12).tolist() == [2, 10, 11, 13, 3]
    assert delete(cell, 99) is None  # not expressed: nothing to delete
    assert overexpress(cell, 12, 32).tolist() == [2, 12, 10, 11, 13, 3]
    assert overexpress(cell, 10, 32) is None  # already the top gene
    assert overexpress(cell, 99, 32).tolist() == [2, 99, 10, 11, 12, 13, 3]  # absent: added on top
    assert overexpress(cell, 99, 6).tolist() == [2, 99, 10, 11, 12, 3]  # at the length limit the last gene goes


def test_the_cached_context_read_out_equals_whole_prompts(simulated):
    from transformers import LlamaForCausalLM

    from maxtoki.analysis.cells import load_cells
    from maxtoki.analysis.prompts import ContextOptions, ContextSampler
    from maxtoki.analysis.timelapse import SharedContextPredictor
    from maxtoki.inference.predict_time import predict

    cells = load_cells(str(simulated / "cells"), ["donor"], time_column="age")
    model = LlamaForCausalLM.from_pretrained(simulated / "model").eval()
    options = ContextOptions("donor", context_cells=2, time_scale=1 / 12)
    sampler = ContextSampler(cells, np.arange(len(cells.obs)), options)
    context = sampler.sample(0, np.random.default_rng(0))
    donors = cells.obs["donor"]
    assert len(set(donors.iloc[context])) == 1 and donors.iloc[context[0]] != donors.iloc[0]
    queries = [cells.input_ids[i] for i in (0, 1, 5, 9, 20)] + [overexpress(cells.input_ids[0], 50, 32)]
    prefix, _ = sampler.prompt(context, queries[0], 128)
    cached = SharedContextPredictor(model, cells.vocab, batch_size=4)(prefix, queries)
    whole = [{"prompt_ids": np.concatenate([prefix, q, [cells.vocab.eoq_id]])} for q in queries]
    expected = predict(model, whole, cells.vocab, batch_size=3).expected
    np.testing.assert_allclose(cached, expected, atol=1e-5)


def test_the_estimator_recovers_a_planted_shift_and_its_slope():
    rng = np.random.default_rng(0)
    true = rng.uniform(240, 960, 300)
    donors = rng.integers(20, size=300)

    def predicted(age):  # a regressor that shrinks towards the mean with slope 0.6, plus noise
        return 600 + 0.6 * (age - 600) + rng.normal(0, 10, len(age))

    shift = 120.0
    control = predicted(true)
    pairs = PairArrays(case_residual=predicted(true + shift) - true, control_residual=control - true,
                       control_true=true, control_predicted=control, case_donor=donors)
    point = estimate(pairs)
    assert point["slope"] == pytest.approx(0.6, abs=0.02)
    assert point["acceleration"] == pytest.approx(0.6 * shift, abs=3)
    assert point["calibrated"] == pytest.approx(shift, abs=5)
    draws = bootstrap(pairs, AccelerationOptions("c", "d", "n", bootstrap=200))
    low, high = np.percentile(draws["calibrated"], [2.5, 97.5])
    assert low < shift < high and high - low < 20


def test_age_acceleration_from_an_h5ad_pairs_age_matched_cells(simulated, capsys):
    out = simulated / "acceleration"
    cli("analyze", "age-acceleration", "--checkpoint", simulated / "model", "--data", simulated / "sim.h5ad",
        "--medians", simulated / "m.json", "--donor-column", "donor", "--condition-column", "condition",
        "--case", "disease", "--control", "control", "--age-tolerance", 120, "--time-scale", 1 / 12,
        "--pairs", 40, "--bootstrap", 50, "--out", out)
    assert "age acceleration" in capsys.readouterr().out
    summary = json.loads((out / "acceleration.json").read_text())
    table = pd.read_csv(out / "pairs.csv")
    obs = pd.read_csv(out / "pairs.csv").merge(_obs(simulated), left_on="cell_id", right_index=True)
    assert summary["pairs"] == 40 and len(table) == 80 and (out / "acceleration.png").stat().st_size > 10_000
    assert set(obs.loc[obs["role"] == "case", "condition"]) == {"disease"}
    assert set(obs.loc[obs["role"] == "control", "condition"]) == {"control"}
    wide = table.pivot(index="pair", columns="role", values="true_age")
    assert (np.abs(wide["case"] - wide["control"]) <= 120).all()
    # contexts come from control donors other than the two query donors
    context_donors = set(table["context_donor"])
    assert not context_donors & set(table.loc[table["role"] == "case", "donor"])
    donors = table.pivot(index="pair", columns="role", values="donor")
    context = table.groupby("pair")["context_donor"].first()
    assert ((context != donors["case"]) & (context != donors["control"])).all()
    low, high = summary["acceleration_interval"]
    assert low <= summary["acceleration"] <= high
    arrays = PairArrays.from_table(table)
    assert estimate(arrays)["acceleration"] == pytest.approx(summary["acceleration"])


def test_perturb_screens_genes_over_cells_from_shards(simulated):
    out = simulated / "perturb"
    cli("analyze", "perturb", "--checkpoint", simulated / "model", "--data", simulated / "cells",
        "--donor-column", "donor", "--top-genes", 8, "--query-cells", 5, "--query-where", "condition=control",
        "--context-where", "condition=control", "--time-scale", 1 / 12, "--next-cell", 120, "--out", out)
    effects = pd.read_csv(out / "effects.csv")
    shifts = pd.read_csv(out / "shifts.csv")
    assert set(effects["mode"]) == {"delete", "overexpress"} and effects["gene"].nunique() == 8
    assert effects["rank"].tolist() == list(range(1, len(effects) + 1))
    assert (effects["mean_shift"].abs().diff().dropna() <= 1e-12).all()  # ranked by the size of the shift
    assert shifts["cell_id"].nunique() == 5
    obs = _obs(simulated)
    assert set(obs.loc[shifts["cell_id"].unique(), "condition"]) == {"control"}
    # a gene is deleted only from cells that express it; the per-gene mean is the mean of its cells
    counts = shifts.groupby(["mode", "gene"]).size()
    assert (counts.loc["overexpress"] <= 5).all() and (counts.loc["delete"] <= 5).all()
    first = effects.iloc[0]
    mine = shifts[(shifts["mode"] == first["mode"]) & (shifts["gene"] == first["gene"])]["shift"]
    assert first["mean_shift"] == pytest.approx(mine.mean()) and first["cells"] == len(mine)
    assert (out / "perturb.png").exists() and json.loads((out / "perturb.json").read_text())["query_cells"] == 5
    # NextCell after each variant: the generated cell's change, 0 (same genes) to 1 (no gene in common)
    assert shifts["next_cell_change"].between(0, 1).all()
    assert first["mean_next_cell_change"] == pytest.approx(
        shifts[(shifts["mode"] == first["mode"]) & (shifts["gene"] == first["gene"])]["next_cell_change"].mean())


def test_analyses_refuse_what_they_cannot_use(simulated, capsys):
    common = ["--checkpoint", simulated / "model", "--donor-column", "donor", "--out", simulated / "bad",
              "--time-scale", 1 / 12]
    assert cli_main([str(a) for a in ["analyze", "age-acceleration", "--data", simulated / "cells", *common,
                                      "--condition-column", "condition", "--case", "smoker", "--control",
                                      "control"]]) == 2
    assert "no cell has condition=smoker; the values are: control, disease" in capsys.readouterr().err
    assert cli_main([str(a) for a in ["analyze", "perturb", "--data", simulated / "cells", *common,
                                      "--genes", "ENSG_NOT_A_GENE"]]) == 2
    assert "not in the model's vocabulary (first: ENSG_NOT_A_GENE)" in capsys.readouterr().err
    assert cli_main([str(a) for a in ["analyze", "perturb", "--data", simulated / "cells", *common,
                                      "--match-columns", "tissue"]]) == 2
    assert "no column 'tissue'" in capsys.readouterr().err
    assert cli_main([str(a) for a in ["analyze", "perturb", "--data", simulated / "sim.h5ad", *common]]) == 2
    assert "give --medians" in capsys.readouterr().err
    assert cli_main([str(a) for a in ["analyze", "perturb", "--data", simulated / "cells", *common[:-2]]]) == 2
    assert "has no token; the vocabulary covers -100..99; give --time-scale" in capsys.readouterr().err
    assert not (simulated / "bad").exists()


def _obs(simulated) -> pd.DataFrame:
    import anndata as ad

    return ad.read_h5ad(simulated / "sim.h5ad", backed="r").obs.astype(str)


def test_the_linear_baseline_reads_time_off_expression_fitted_or_cross_fitted_over_groups(tiny_vocab):
    from maxtoki.inference.linear_baseline import cell_disjoint_folds, features, linear_baseline

    v, genes = tiny_vocab, [int(i) for i in tiny_vocab.gene_ids]
    rng = np.random.default_rng(0)

    def example(group, rank):  # the rank of the first gene in the query cell sets Δ
        order = [g for g in rng.permutation(genes[1:])]
        query = order[:rank] + [genes[0]] + order[rank:]
        context = list(rng.permutation(genes))
        prompt = [v.bos_id, *context, v.eos_id, v.boq_id, v.bos_id, *query, v.eos_id, v.eoq_id]
        return {"prompt_ids": np.array(prompt), "timelapse": 2 * rank - 4, "group": group}

    examples = [example(f"donor{i % 6}", int(rng.integers(5))) for i in range(240)]
    x = features(examples[:1], v)
    query_block = x[0, len(v):].toarray().ravel()
    rank = examples[0]["prompt_ids"].tolist()[9:14].index(genes[0])  # the query's genes follow <boq> <bos>
    assert query_block[genes[0]] == pytest.approx(1 - rank / 5) and query_block.sum() == pytest.approx(3.0)
    predicted, how = linear_baseline(examples, v)
    truth = np.array([e["timelapse"] for e in examples], dtype=float)
    assert how == "cross-fitted over 5 folds of groups"
    assert np.corrcoef(predicted, truth)[0, 1] > 0.95
    predicted, how = linear_baseline(examples[:40], v, training=examples[40:])
    assert how == "fitted on the training paragraphs" and np.abs(predicted - truth[:40]).mean() < 0.5
    # one group whose examples share cells: no regressor is fitted on an example sharing a cell with one it scores
    single = [{**e, "group": "all", "cell_indices": rng.choice(240, 2, replace=False)} for e in examples]
    predicted, how = linear_baseline(single, v)
    assert how.startswith("cross-fitted over 20 folds of examples (one group only), never on an example sharing")
    assert np.corrcoef(predicted, truth)[0, 1] > 0.95
    cells = [set(e["cell_indices"].tolist()) for e in single]
    folds = list(cell_disjoint_folds(cells, 20))
    assert sorted(np.concatenate([test for _, test in folds]).tolist()) == list(range(len(single)))
    for train, test in folds:
        assert all(cells[i].isdisjoint(cells[j]) for i in train for j in test)
        assert len(train) > len(single) / 2
    # examples that all share cells leave nothing to fit on without them: the old folds, and the output says so
    crowded = [{**e, "cell_indices": np.array([0, i])} for i, e in enumerate(single[:30])]
    assert "they may share cells: too few examples share no cell" in linear_baseline(crowded, v)[1]
