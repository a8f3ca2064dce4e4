"""The analyses' mechanics, with a random tiny model on simulated donors: perturbations change exactly the
tokens they should, the cached-context read-out equals full prompts, pairs are age-matched with contexts
from other control donors, the estimator recovers a planted shift, the crossed bootstrap over case and
control donors holds the truth where a case-only one does not, and bad input is refused. A tiny model
trained for seconds reads time and next cells of donors it did not train on (tests/test_learning.py: larger,
slow) and finds a planted age shift, and no shift where none was planted, querying only control donors it did
not train on (tests/test_analysis_validation.py: a larger model, slow)."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers.held_out_baselines import held_out_baselines
from helpers.planted_shift import DISEASE_DONORS, DONORS, SHIFT, age_acceleration, train_on_simulated_donors

from maxtoki.analysis.age_acceleration import AccelerationOptions, PairArrays, bootstrap, estimate
from maxtoki.analysis.perturbations import delete, overexpress
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
    model.config.maxtoki = {"objective": "temporal"}  # a stand-in for a stage-2 model: these tests check mechanics
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


def _pairs_with_donor_offsets(rng, shift: float, case_offset: float, control_offset: float, n: int = 300,
                              donors: int = 20):
    """Pairs of a case and a control cell of random donors read by a regressor that shrinks towards the mean
    with slope 0.6; all cells of a donor read older or younger by the donor's offset (standard deviations
    ``case_offset`` and ``control_offset``), each cell with noise of 10."""
    true = rng.uniform(240, 960, n)
    case_donor, control_donor = rng.integers(donors, size=n), rng.integers(donors, size=n)
    case_offsets, control_offsets = rng.normal(0, case_offset, donors), rng.normal(0, control_offset, donors)

    def predicted(age, offsets):
        return 600 + 0.6 * (age - 600) + offsets + rng.normal(0, 10, len(age))

    control = predicted(true, control_offsets[control_donor])
    case = predicted(true + shift, case_offsets[case_donor])
    return PairArrays(case_residual=case - true, control_residual=control - true, control_true=true,
                      control_predicted=control, case_donor=case_donor, control_donor=control_donor)


def test_the_estimator_recovers_a_planted_shift_and_its_slope():
    shift = 120.0
    pairs = _pairs_with_donor_offsets(np.random.default_rng(0), shift, case_offset=5, control_offset=5)
    point = estimate(pairs)
    assert point["slope"] == pytest.approx(0.6, abs=0.02)
    assert point["acceleration"] == pytest.approx(0.6 * shift, abs=4)
    assert point["calibrated"] == pytest.approx(shift, abs=6)
    draws = bootstrap(pairs, AccelerationOptions("c", "d", "n", bootstrap=300))
    low, high = np.percentile(draws["calibrated"], [2.5, 97.5])
    assert low < shift < high and high - low < 25
    # a pair counted k times weighs as k copies of it
    weights = np.random.default_rng(1).integers(0, 3, len(pairs.case_residual))
    copies = PairArrays(*(np.repeat(getattr(pairs, f), weights) for f in PairArrays.__dataclass_fields__))
    assert estimate(pairs, weights) == pytest.approx(estimate(copies))


def test_the_crossed_bootstrap_covers_control_donors_that_read_older_or_younger():
    """When control donors carry their own offsets, resampling only case donors gives intervals too narrow to
    hold the truth; resampling both kinds of donors gives intervals that hold it about 95% of the time."""
    shift, options, rng = 120.0, AccelerationOptions("c", "d", "n", bootstrap=200), np.random.default_rng(3)
    covered, widths = {"crossed": 0, "case donors only": 0}, {"crossed": [], "case donors only": []}
    for _ in range(80):
        pairs = _pairs_with_donor_offsets(rng, shift, case_offset=20, control_offset=40)
        case_only = PairArrays(**{**pairs.__dict__, "control_donor": np.zeros_like(pairs.control_donor)})
        for name, arrays in (("crossed", pairs), ("case donors only", case_only)):
            low, high = np.nanpercentile(bootstrap(arrays, options)["calibrated"], [2.5, 97.5])
            covered[name] += low <= shift <= high
            widths[name].append(high - low)
    assert np.mean(widths["crossed"]) > 1.5 * np.mean(widths["case donors only"])
    assert covered["crossed"] / 80 >= 0.85 and covered["case donors only"] / 80 <= 0.8


def test_age_acceleration_from_an_h5ad_pairs_age_matched_cells(simulated, capsys):
    out = simulated / "acceleration"
    cli("analyze", "age-acceleration", "--checkpoint", simulated / "model", "--data", simulated / "sim.h5ad",
        "--medians", simulated / "m.json", "--donor-column", "donor", "--condition-column", "condition",
        "--case", "disease", "--control", "control", "--age-tolerance", 120, "--time-scale", 1 / 12,
        "--pairs", 40, "--bootstrap", 50, "--out", out)
    summary = json.loads((out / "acceleration.json").read_text())
    assert summary["control_donors_trained"] is None and 1 < summary["control_donors"] <= 8
    assert (f"control queries from {summary['control_donors']} donors, whether the model trained on them is "
            "unknown (give --train-data)") in capsys.readouterr().out
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


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A tiny model trained on simulated control donors whose disease donors read 60 months older, or not at
    all (tests/helpers/planted_shift.py); about 30 s."""
    return train_on_simulated_donors(tmp_path_factory.mktemp("planted"), seed=1)


def test_a_trained_model_finds_the_planted_age_shift_and_none_where_none_was_planted(planted, capsys):
    shifted = age_acceleration(planted, "shifted", "--train-data", planted / "p/train")
    printed = capsys.readouterr().out
    null = age_acceleration(planted, "null", "--train-data", planted / "p/train")
    with capsys.disabled():
        print(f"\nplanted {SHIFT} months: {shifted['calibrated']:.1f} {shifted['calibrated_interval']}; planted 0: "
              f"{null['calibrated']:.1f} {null['calibrated_interval']} (calibrated, 95% crossed bootstrap)")
    low, high = shifted["calibrated_interval"]
    assert low <= SHIFT <= high and low > 0  # found, and consistent with the truth
    low, high = null["calibrated_interval"]
    assert low <= 0 <= high
    # control queries come only from the control donors held out of training; contexts from any control donor
    groups = json.loads((planted / "p/splits.json").read_text())["groups"]
    table = pd.read_csv(planted / "acceleration-shifted/pairs.csv")
    assert set(table.loc[table["role"] == "control", "donor"]) <= set(groups["val"])
    assert set(table["context_donor"]) & set(groups["train"])
    assert shifted["control_donors_trained"] == 0 and shifted["case_donors_trained"] == 0
    assert shifted["control_donors_left_out_as_trained"] == len(groups["train"])
    assert (f"control queries from {shifted['control_donors']} donors, 0 of them trained on; "
            f"{len(groups['train'])} trained control donors left out") in printed


def test_the_fast_model_reads_time_and_next_cells_of_held_out_donors(planted):
    """The fast counterpart of tests/test_learning.py on the fixture's own evaluation (p/val: control donors it
    never trained on). Recorded (benchmarks/README.md, "Learning"): median error 0.37 x the training-mean
    baseline's (0.30 at seed 2), 0.42 nats under the unigram cross-entropy (0.29); a model three times worse
    fails."""
    metrics = json.loads((planted / "eval_metrics.json").read_text())
    median_baseline, unigram = held_out_baselines(str(planted / "p/train"), str(planted / "p/val"),
                                                  Vocabulary.load(planted / "v.json"))
    assert metrics["TimelapseMedianAE"] <= 0.6 * median_baseline
    assert metrics["TimelapsePearson"] >= 0.8
    assert metrics["NextGeneCrossEntropy"] <= unigram - 0.15


def test_the_donors_a_model_trained_on_are_read_from_its_paragraphs(planted):
    from maxtoki.analysis.cells import load_cells
    from maxtoki.analysis.trained_donors import trained_donors

    groups = json.loads((planted / "p/splits.json").read_text())["groups"]
    cells = load_cells(str(planted / "shifted-cells"), ["donor"], time_column="age")
    assert trained_donors([str(planted / "p/train")], "donor", cells) == set(groups["train"])
    # cell shards without the column: the training cells are found among the analysis cells by cell id
    samples = load_cells(str(planted / "shifted.h5ad"), ["sample"], time_column="age", vocab=cells.vocab,
                         medians=str(planted / "m.json"), model_input_size=32)
    expected = {s for s in samples.obs["sample"] if s.split("_")[0] in groups["train"]}
    assert trained_donors([str(planted / "p/train")], "sample", samples) == expected


def test_age_acceleration_refuses_training_data_it_cannot_use(planted, capsys):
    def refused(*train_data) -> str:
        assert cli_main([str(a) for a in [
            "analyze", "age-acceleration", "--checkpoint", planted / "run/latest-rank0.pt", "--data",
            planted / "shifted-cells", "--donor-column", "donor", "--time-scale", 1 / 12, "--condition-column",
            "condition", "--case", "disease", "--control", "control", "--out", planted / "refused", "--train-data",
            *train_data]]) == 2
        return capsys.readouterr().err

    assert (f"all {DONORS - DISEASE_DONORS} control donors are in the training paragraphs (--train-data): no "
            "untrained control donor is left to query") in refused(planted / "p/train", planted / "p/val")
    assert f"--train-data {planted / 'p'}: holds several splits; give the one the model was trained on" in \
        refused(planted / "p")
    assert "not paragraph shards (kind 'maxtoki.cells')" in refused(planted / "shifted-cells")
    assert not (planted / "refused").exists()


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
    # a gene is deleted from exactly the query cells that express it, and overexpressed in every query cell
    # where it is not already the top gene; the per-gene mean is the mean of those cells
    from maxtoki.analysis.cells import load_cells

    cells = load_cells(str(simulated / "cells"), [], time_column="age")
    tokens = dict(zip(cells.obs.index, cells.input_ids))
    queried = set(shifts["cell_id"])
    for gene in effects["gene"].unique():
        token = cells.vocab[gene]
        touched = {mode: set(shifts.loc[(shifts["mode"] == mode) & (shifts["gene"] == gene), "cell_id"])
                   for mode in ("delete", "overexpress")}
        assert touched["delete"] == {c for c in queried if token in tokens[c]}
        assert touched["overexpress"] == {c for c in queried if tokens[c][1] != token}
    first = effects.iloc[0]
    mine = shifts[(shifts["mode"] == first["mode"]) & (shifts["gene"] == first["gene"])]["shift"]
    assert first["mean_shift"] == pytest.approx(mine.mean()) and first["cells"] == len(mine)
    # the specific shift: beyond the median shift of the 8 genes perturbed the same way in the same cell
    typical = shifts.groupby(["cell_id", "mode"])["shift"].median()
    rows = shifts[(shifts["mode"] == first["mode"]) & (shifts["gene"] == first["gene"])]
    assert first["mean_specific_shift"] == pytest.approx(
        np.mean([r.shift - typical[(r.cell_id, r.mode)] for r in rows.itertuples()]))
    assert (out / "perturb.png").exists() and json.loads((out / "perturb.json").read_text())["query_cells"] == 5
    # NextCell after each variant: the generated cell's change, 0 (same genes) to 1 (no gene in common)
    assert shifts["next_cell_change"].between(0, 1).all()
    assert first["mean_next_cell_change"] == pytest.approx(
        shifts[(shifts["mode"] == first["mode"]) & (shifts["gene"] == first["gene"])]["next_cell_change"].mean())


def test_a_perturbation_shift_is_the_whole_perturbed_prompt_read_out_minus_the_original(simulated):
    """Each shift in shifts.csv, recomputed from what the files say: the context cells of contexts.csv, the query
    cell with the gene deleted or moved to the top, read as whole prompts (no shared context)."""
    from transformers import LlamaForCausalLM

    from maxtoki.analysis.cells import load_cells
    from maxtoki.data.paragraphs.blueprint import TIME_BETWEEN_CELLS
    from maxtoki.data.paragraphs.sampling import assemble
    from maxtoki.inference.predict_time import predict

    out = simulated / "perturb-by-value"
    cli("analyze", "perturb", "--checkpoint", simulated / "model", "--data", simulated / "cells", "--donor-column",
        "donor", "--top-genes", 3, "--query-cells", 2, "--query-where", "condition=control", "--context-where",
        "condition=control", "--time-scale", 1 / 12, "--seed", 4, "--out", out)
    shifts, contexts = pd.read_csv(out / "shifts.csv"), pd.read_csv(out / "contexts.csv")
    cells = load_cells(str(simulated / "cells"), [], time_column="age")
    model = LlamaForCausalLM.from_pretrained(simulated / "model").eval()
    position = {cell_id: i for i, cell_id in enumerate(cells.obs.index)}
    months = cells.obs["time"].to_numpy(dtype=float)

    def read_out(context_ids: list[str], query: np.ndarray) -> float:
        context = [position[c] for c in context_ids]
        times = np.floor(np.append(months[context], months[context[-1]]) / 12 + 0.5).astype(int)  # years, rounded
        prompt, _, _ = assemble([cells.input_ids[c] for c in context] + [query], times, TIME_BETWEEN_CELLS,
                                cells.vocab, model.config.max_position_embeddings)
        return float(predict(model, [{"prompt_ids": prompt}], cells.vocab).expected[0]) * 12  # months

    assert len(shifts) >= 6 and set(shifts["mode"]) == {"delete", "overexpress"}
    for row in shifts.itertuples():
        context_ids = contexts.loc[contexts["cell_id"] == row.cell_id, "context_cells"].item().split(";")
        cell = np.asarray(cells.input_ids[position[row.cell_id]])
        gene = cells.vocab[row.gene]
        changed = delete(cell, gene) if row.mode == "delete" else overexpress(cell, gene, cells.max_length)
        original = read_out(context_ids, cell)
        assert row.baseline == pytest.approx(original, abs=1e-3)
        assert row.shift == pytest.approx(read_out(context_ids, changed) - original, abs=1e-3)


def test_several_contexts_per_cell_average_the_shift_over_contexts_from_distinct_donors(simulated):
    from transformers import LlamaForCausalLM

    from maxtoki.analysis.cells import load_cells
    from maxtoki.analysis.perturb import PerturbOptions, perturb
    from maxtoki.analysis.prompts import ContextOptions, ContextSampler
    from maxtoki.errors import MaxtokiError
    from maxtoki.inference.predict_time import predict

    cells = load_cells(str(simulated / "cells"), ["donor", "condition"], time_column="age")
    model = LlamaForCausalLM.from_pretrained(simulated / "model").eval()
    context = ContextOptions("donor", context_cells=2, time_scale=1 / 12)
    control = (("condition", "control"),)
    genes = [cells.vocab.token(g) for g in cells.input_ids[0][1:4]]
    options = PerturbOptions(genes=tuple(genes), query_cells=2, query_where=control, context_where=control,
                             contexts_per_cell=3)
    out = simulated / "perturb-contexts"
    perturb(model, cells, out, context, options, batch_size=8)
    shifts, contexts = pd.read_csv(out / "shifts.csv"), pd.read_csv(out / "contexts.csv")
    obs, donors = _obs(simulated), cells.obs["donor"]
    assert contexts.groupby("cell_id").size().tolist() == [3, 3]
    for cell_id, rows in contexts.groupby("cell_id"):
        assert rows["context_donor"].nunique() == 3 and donors[cell_id] not in set(rows["context_donor"])
    sampler = ContextSampler(cells, np.arange(len(cells.obs)), context)
    per_context_spread = []
    for (cell_id, mode, gene), row in shifts.set_index(["cell_id", "mode", "gene"]).iterrows():
        cell = cells.input_ids[cells.obs.index.get_loc(cell_id)]
        variant = delete(cell, cells.vocab[gene]) if mode == "delete" else \
            overexpress(cell, cells.vocab[gene], cells.max_length)
        each = []
        for chosen in contexts.loc[contexts["cell_id"] == cell_id, "context_cells"]:
            positions = cells.obs.index.get_indexer(chosen.split(";"))
            assert set(obs.loc[chosen.split(";"), "condition"]) == {"control"}
            prefix, _ = sampler.prompt(positions, cell, model.config.max_position_embeddings)
            prompts = [{"prompt_ids": np.concatenate([prefix, q, [cells.vocab.eoq_id]])} for q in (cell, variant)]
            base, perturbed = predict(model, prompts, cells.vocab).expected
            each.append((perturbed - base) * 12)  # time tokens are years, the time column months
        assert row["shift"] == pytest.approx(np.mean(each), abs=1e-3)
        per_context_spread.append(np.ptp(each))
    assert max(per_context_spread) > 0.01  # the contexts differ, so the mean is not one context's shift
    with pytest.raises(MaxtokiError, match="no query cell has 12 context donors"):  # 11 other donors
        perturb(model, cells, simulated / "bad", context, PerturbOptions(genes=tuple(genes), contexts_per_cell=12))


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
