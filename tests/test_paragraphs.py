"""Stage-2 paragraphs: exact layouts, properties of sampled examples, determinism, splits, queries."""

import json

import anndata as ad
import numpy as np
import pytest
from helpers.split_cells import cells_and_donors

from maxtoki.cli import main
from maxtoki.data.paragraphs.blueprint import NEXT_CELL, TIME_BETWEEN_CELLS, Blueprint
from maxtoki.data.paragraphs.cell_store import CellStore
from maxtoki.data.paragraphs.sampling import assemble, to_time_units
from maxtoki.errors import MaxtokiError
from maxtoki.vocab import Vocabulary

BOS, EOS = 2, 3


@pytest.fixture(scope="module")
def vocab():
    return Vocabulary.build([f"ENSG{i:011d}" for i in range(1, 6)], max_time=10)


def t(vocab, value):
    return vocab.time_token(value)


def test_time_units_round_half_away_from_zero():
    assert to_time_units(np.array([0.5, 1.5, 2.5, -0.5, -2.5, 1.49, 0.0]), 1.0).tolist() == [1, 2, 3, -1, -3, 1, 0]
    assert to_time_units(np.array([1.25, 0.1]), 12).tolist() == [15, 1]


def test_time_between_cells_layout(vocab):
    cells = [np.array([2, 4, 5, 3]), np.array([2, 6, 3]), np.array([2, 7, 8, 3])]
    prompt, response, target = assemble(cells, np.array([0, 5, 2]), TIME_BETWEEN_CELLS, vocab, 100)
    boq, eoq = vocab.boq_id, vocab.eoq_id
    assert prompt.tolist() == [2, 4, 5, 3, t(vocab, 5), 2, 6, 3, boq, 2, 7, 8, 3, eoq]
    assert response.tolist() == [t(vocab, -3)] and target == -3


def test_next_cell_layout(vocab):
    cells = [np.array([2, 4, 5, 3]), np.array([2, 6, 3]), np.array([2, 7, 8, 3])]
    prompt, response, target = assemble(cells, np.array([0, 5, 2]), NEXT_CELL, vocab, 100)
    boq, eoq = vocab.boq_id, vocab.eoq_id
    assert prompt.tolist() == [2, 4, 5, 3, t(vocab, 5), 2, 6, 3, boq, t(vocab, -3), eoq]
    assert response.tolist() == [2, 7, 8, 3] and target == -3


def test_first_cell_is_cut_keeping_its_eos(vocab):
    cells = [np.array([2, 4, 5, 6, 3]), np.array([2, 7, 3])]
    full, response, _ = assemble(cells, np.array([4, 1]), NEXT_CELL, vocab, 100)
    assert len(full) + len(response) == 11
    prompt, response, _ = assemble(cells, np.array([4, 1]), NEXT_CELL, vocab, 9)
    assert prompt.tolist() == [2, 4, 3, vocab.boq_id, t(vocab, -3), vocab.eoq_id]
    assert len(prompt) + len(response) == 9
    with pytest.raises(MaxtokiError):
        assemble(cells, np.array([4, 1]), NEXT_CELL, vocab, 8)


@pytest.fixture(scope="module")
def hsmm_cells(tmp_path_factory, hsmm_path, hsmm_reference):
    vocab_path, medians = hsmm_reference
    out = tmp_path_factory.mktemp("hsmm_cells") / "cells"
    assert main(["data", "tokenize", str(hsmm_path), "--vocab", str(vocab_path), "--medians", str(medians),
                 "--out", str(out), "--allow-non-integer", "--time-column", "hours", "--chunk-size", "100"]) == 0
    return out, Vocabulary.load(vocab_path)


def make_paragraphs(cells, out, *extra):
    assert main(["data", "paragraphs", str(cells), "--out", str(out), *map(str, extra)]) == 0
    return CellStore(str(out))


def test_time_tokens_far_past_the_data_get_a_notice_that_names_the_fix(tmp_path, capsys, hsmm_cells):
    """HSMM spans 72 hours; the default vocabulary's time tokens reach ±1,500 (the released months): the notice says
    which --max-time fits. --time-scale 10 (tenths of hours) spans 720, within 4 x: no notice."""
    cells, _ = hsmm_cells
    capsys.readouterr()
    make_paragraphs(cells, tmp_path / "hours", "--num-examples", 20)
    assert ("reach ±1500, 21 x the largest Δ of these cells (72): a model spreads its time read-out over times that "
            "never occur; build the vocabulary with `maxtoki data vocab --max-time 91` (or give --time-scale)"
            ) in capsys.readouterr().err
    make_paragraphs(cells, tmp_path / "tenths", "--num-examples", 20, "--time-scale", 10)
    assert "reach ±" not in capsys.readouterr().err


def test_hsmm_paragraphs_end_to_end(tmp_path, hsmm_cells):
    cells, vocab = hsmm_cells
    stage1 = CellStore(str(cells))
    paragraphs = make_paragraphs(cells, tmp_path / "p", "--num-examples", 300, "--seed", 3, "--max-seq-len", 12000)
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["counts"]["examples"] == len(paragraphs) == 300
    boq, eoq = vocab.boq_id, vocab.eoq_id
    negative = truncated = 0
    for example in paragraphs:
        ids, cell_indices, times = example["input_ids"], example["cell_indices"], example["times"]
        assert len(ids) <= 12000 and ids[example["prompt_length"] - 1] == eoq
        assert 3 <= len(cell_indices) <= 4 and set(times) <= {0, 24, 48, 72} and len(set(times)) == len(times)
        sources = [stage1[int(i)] for i in cell_indices]
        assert [s["time"] for s in sources] == times.tolist()
        deltas = np.diff(times)
        assert example["timelapse"] == deltas[-1]
        negative += (deltas < 0).any()
        # walk the example: context cells and Δ tokens alternate, then <boq> ... <eoq> and the response
        first_end = int(np.flatnonzero(ids == EOS)[0]) + 1
        first, expected = ids[:first_end], sources[0]["input_ids"]
        if len(first) < len(expected):  # cut from the end, keeping <eos>
            assert np.array_equal(first[:-1], expected[:len(first) - 1]) and first[-1] == EOS
            truncated += 1
        else:
            assert np.array_equal(first, expected)
        position = first_end
        for k, source in enumerate(sources[1:-1]):
            assert ids[position] == vocab.time_token(deltas[k])
            expected = source["input_ids"]
            assert np.array_equal(ids[position + 1:position + 1 + len(expected)], expected)
            position += 1 + len(expected)
        assert ids[position] == boq
        query = sources[-1]["input_ids"]
        if example["task"] == TIME_BETWEEN_CELLS:
            assert np.array_equal(ids[position + 1:position + 1 + len(query)], query)
            assert ids[-2] == eoq and ids[-1] == vocab.time_token(deltas[-1])
        else:
            assert ids[position + 1:position + 3].tolist() == [vocab.time_token(deltas[-1]), eoq]
            assert np.array_equal(ids[position + 3:], query)
    assert negative > 50 and truncated > 10
    tasks = manifest["counts"]["tasks"]
    assert tasks["TimeBetweenCells"] + tasks["NextCell"] == 300 and 100 < tasks["TimeBetweenCells"] < 200


def test_no_negative_timelapses_and_task_ratio(tmp_path, hsmm_cells):
    cells, _ = hsmm_cells
    paragraphs = make_paragraphs(cells, tmp_path / "p", "--num-examples", 400, "--no-negative-timelapses",
                                 "--task-ratio", 0.25, "--min-timepoints", 2, "--max-timepoints", 2)
    examples = list(paragraphs)
    assert all((np.diff(e["times"]) > 0).all() and len(e["times"]) == 2 for e in examples)
    share = np.mean([e["task"] == TIME_BETWEEN_CELLS for e in examples])
    assert abs(share - 0.25) < 0.06


def test_same_seed_same_bytes_for_any_workers_and_from_the_blueprint(tmp_path, hsmm_cells, monkeypatch):
    from maxtoki.data.paragraphs import build as paragraph_build

    cells, _ = hsmm_cells
    monkeypatch.setattr(paragraph_build, "PART_EXAMPLES", 40)
    args = ["--num-examples", 100, "--seed", 11, "--max-seq-len", 9000]
    make_paragraphs(cells, tmp_path / "a", *args)
    make_paragraphs(cells, tmp_path / "b", *args, "--workers", 2)
    make_paragraphs(cells, tmp_path / "c", "--blueprint", tmp_path / "a" / "blueprint.npz", "--max-seq-len", 9000)
    make_paragraphs(cells, tmp_path / "d", "--num-examples", 100, "--seed", 12, "--max-seq-len", 9000)
    shards = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.mds"))
    assert len(shards) == 3
    for name in shards:
        reference = (tmp_path / "a" / name).read_bytes()
        assert (tmp_path / "b" / name).read_bytes() == reference
        assert (tmp_path / "c" / name).read_bytes() == reference
    assert (tmp_path / "d" / shards[0]).read_bytes() != (tmp_path / "a" / shards[0]).read_bytes()
    blueprint = Blueprint.load(tmp_path / "a" / "blueprint.npz")
    assert len(blueprint) == 100 and blueprint.group_names == ["hsmm_myoblast_timecourse"]


def test_eval_layout_keeps_prompt_and_response_apart(tmp_path, hsmm_cells):
    cells, vocab = hsmm_cells
    train = list(make_paragraphs(cells, tmp_path / "t", "--num-examples", 30, "--seed", 5))
    evaluation = list(make_paragraphs(cells, tmp_path / "e", "--num-examples", 30, "--seed", 5, "--eval"))
    for a, b in zip(train, evaluation):
        assert b["prompt_ids"][-1] == vocab.eoq_id and len(b["prompt_ids"]) == b["prompt_length"]
        assert np.array_equal(np.concatenate([b["prompt_ids"], b["response_ids"]]), a["input_ids"])


def cli(*argv):
    assert main([str(a) for a in argv]) == 0


@pytest.fixture(scope="module")
def simulated_cells(tmp_path_factory):
    """12 donors x 4 ages, 4 of them 'disease' donors that look 60 months older."""
    root = tmp_path_factory.mktemp("sim")
    cli("data", "simulate", "--out", root / "sim.h5ad", "--donors", 12, "--ages-per-donor", 4,
        "--cells-per-sample", 10, "--genes", 300, "--disease-donors", 4, "--age-acceleration", 60)
    cli("data", "medians", root / "sim.h5ad", "--out", root / "m.json")
    cli("data", "vocab", "--medians", root / "m.json", "--out", root / "v.json")
    cli("data", "tokenize", root / "sim.h5ad", "--vocab", root / "v.json", "--medians", root / "m.json",
        "--out", root / "cells", "--time-column", "age", "--group-columns", "donor",
        "--keep-obs", "donor", "cell_type", "condition")
    return root / "cells"


def test_splits_hold_whole_groups_and_holdouts(tmp_path, simulated_cells):
    out = tmp_path / "p"
    cli("data", "paragraphs", simulated_cells, "--out", out, "--num-examples", 200, "--split",
        "train=0.5,val=0.25,test=0.25", "--holdout-values", "condition=disease", "--time-scale", 0.1)
    splits = json.loads((out / "splits.json").read_text())["groups"]
    assert sorted(splits) == ["holdout", "test", "train", "val"]
    named = [g for groups in splits.values() for g in groups]
    assert len(named) == len(set(named)) == 12  # every donor in exactly one split
    assert len(splits["holdout"]) == 4 and len(splits["train"]) == 4
    stage1 = CellStore(str(simulated_cells))
    seen = {}
    for name in splits:
        for example in CellStore(str(out / name)):
            donors = {stage1[int(i)]["donor"] for i in example["cell_indices"]}
            conditions = {stage1[int(i)]["condition"] for i in example["cell_indices"]}
            assert donors == {example["group"]} and example["group"] in splits[name]
            assert conditions == ({"disease"} if name == "holdout" else {"control"})
            seen.setdefault(name, set()).add(example["group"])
    assert all(seen[a].isdisjoint(seen[b]) for a in seen for b in seen if a != b)
    # examples are scaled: times in tens of months
    example = next(iter(CellStore(str(out / "train"))))
    ages = [stage1[int(i)]["time"] for i in example["cell_indices"]]
    assert example["times"].tolist() == to_time_units(np.array(ages), 0.1).tolist()


def test_a_split_run_over_files_maxtoki_did_not_write_is_refused_every_time(capsys, tmp_path, simulated_cells):
    """Every split's location is checked before the run claims the directory (its marker lets a rerun replace
    finished splits), so a rerun is refused again instead of deleting the files."""
    out = tmp_path / "p"
    (out / "test").mkdir(parents=True)
    (out / "test" / "notes.txt").write_text("mine")
    argv = ["data", "paragraphs", str(simulated_cells), "--out", str(out), "--num-examples", "50", "--time-scale",
            "0.1", "--split", "train=0.5,test=0.5"]
    for _ in range(2):
        assert main(argv) == 2
        assert capsys.readouterr().err == (
            f"maxtoki: error: {out / 'test'}: holds files but no manifest.json, so maxtoki did not write them (its "
            "unfinished runs leave nothing there); choose another --out, or pass --overwrite to delete them\n")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["test", "test/notes.txt"]
    assert main(argv + ["--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["splits.json", "test", "train"]
    assert (out / "test" / "manifest.json").exists() and not (out / "test" / "notes.txt").exists()
    capsys.readouterr()
    assert main(argv) == 2
    assert capsys.readouterr().err == (f"maxtoki: error: {out}: holds a finished output; choose another --out, or "
                                       "pass --overwrite to replace it\n")


def test_holdout_fraction_splits_one_time_course_by_cells(tmp_path, hsmm_cells):
    cells, _ = hsmm_cells
    out = tmp_path / "p"
    cli("data", "paragraphs", cells, "--out", out, "--num-examples", 300, "--holdout-fraction", 0.2,
        "--min-timepoints", 2, "--max-timepoints", 2)
    stage1 = CellStore(str(cells))
    times = np.array([stage1[i]["time"] for i in range(len(stage1))])
    used = {name: {int(i) for e in CellStore(str(out / name)) for i in e["cell_indices"]}
            for name in ("train", "holdout")}
    assert used["train"].isdisjoint(used["holdout"])
    held_per_time = {t: sum(times[i] == t for i in used["holdout"]) for t in (0, 24, 48, 72)}
    per_time = {t: int((times == t).sum()) for t in (0, 24, 48, 72)}  # 69, 74, 79, 49 cells
    assert all(held_per_time[t] <= round(0.2 * per_time[t]) for t in per_time)  # a fifth of every time point
    from maxtoki.data.paragraphs.build import _random_cells
    from maxtoki.data.paragraphs.cell_store import build_cell_index

    held = _random_cells(build_cell_index(stage1), 0.2, seed=[0, 1])
    assert {t: int(held[times == t].sum()) for t in per_time} == {0: 14, 24: 15, 48: 16, 72: 10}
    assert used["holdout"] <= set(np.flatnonzero(held).tolist())
    assert len(CellStore(str(out / "holdout"))) == pytest.approx(60, abs=3)  # examples by share of cells
    assert json.loads((out / "splits.json").read_text())["holdout_fraction"] == 0.2
    assert main(["data", "paragraphs", str(cells), "--out", str(tmp_path / "q"), "--holdout-fraction", "1.5"]) == 2
    # a validation share of the other cells: apart from both, the held-out cells unchanged
    cli("data", "paragraphs", cells, "--out", tmp_path / "v", "--num-examples", 300, "--holdout-fraction", 0.2,
        "--validation-fraction", 0.1, "--min-timepoints", 2, "--max-timepoints", 2)
    validation = _random_cells(build_cell_index(stage1), 0.1, seed=[0, 2], among=~held)
    assert not (validation & held).any()
    assert {t: int(validation[times == t].sum()) for t in per_time} == {0: 6, 24: 6, 48: 6, 72: 4}
    split = {name: {int(i) for e in CellStore(str(tmp_path / "v" / name)) for i in e["cell_indices"]}
             for name in ("train", "validation", "holdout")}
    assert split["validation"] <= set(np.flatnonzero(validation).tolist())
    assert split["holdout"] <= set(np.flatnonzero(held).tolist())
    assert split["train"].isdisjoint(split["validation"] | split["holdout"])
    assert json.loads((tmp_path / "v" / "splits.json").read_text())["validation_fraction"] == 0.1
    assert main(["data", "paragraphs", str(cells), "--out", str(tmp_path / "w"), "--split", "train=0.5,test=0.5",
                 "--validation-fraction", "0.1"]) == 2


@pytest.mark.parametrize("split", [["--split", "train=0.8,val=0.1,test=0.1"], ["--holdout-fraction", "0.2"]],
                         ids=["donors", "cells"])
def test_training_paragraphs_and_prompts_built_in_separate_runs_share_no_scored_cell(tmp_path, simulated_cells,
                                                                                       split):
    """README steps 4 and 5 build the training paragraphs and the evaluation prompts in two runs: the same split
    options must hold out the same donors (or cells) in both, or the evaluation scores cells the model trained on."""
    cli("data", "paragraphs", simulated_cells, "--out", tmp_path / "paragraphs", "--max-seq-len", 1024,
        "--time-scale", 0.1, *split)
    cli("data", "paragraphs", simulated_cells, "--out", tmp_path / "eval", "--eval", "--max-seq-len", 1024,
        "--time-scale", 0.1, *split)
    scored = "test" if split[0] == "--split" else "holdout"
    trained_cells, trained_donors = cells_and_donors(simulated_cells, tmp_path / "paragraphs" / "train")
    scored_cells, scored_donors = cells_and_donors(simulated_cells, tmp_path / "eval" / scored)
    assert len(scored_cells) >= 20 and len(trained_cells) >= 200  # both sides hold many cells
    assert trained_cells.isdisjoint(scored_cells)
    if split[0] == "--split":  # whole donors held out
        assert len(scored_donors) == 1 and trained_donors.isdisjoint(scored_donors)
    else:  # cells of every donor held out
        assert scored_donors == trained_donors


def test_holdout_groups_and_a_split_too_fine_for_the_groups(capsys, tmp_path, simulated_cells, hsmm_cells):
    cli("data", "paragraphs", simulated_cells, "--out", tmp_path / "h", "--num-examples", 50, "--time-scale", 0.1,
        "--holdout-groups", "donor003", "donor007")
    assert json.loads((tmp_path / "h" / "splits.json").read_text())["groups"]["holdout"] == ["donor003", "donor007"]
    assert main(["data", "paragraphs", str(hsmm_cells[0]), "--out", str(tmp_path / "x"), "--split",
                 "train=0.9,test=0.1"]) == 2
    assert "1 group(s) cannot fill 2 splits" in capsys.readouterr().err


def test_queries_swap_in_disease_cells(tmp_path, simulated_cells):
    cli("data", "paragraphs", simulated_cells, "--out", tmp_path / "p", "--num-examples", 120, "--eval",
        "--holdout-values", "condition=disease", "--task-ratio", 1.0)
    cli("data", "queries", tmp_path / "p" / "train", "--cells", simulated_cells, "--out", tmp_path / "q",
        "--match-time-tolerance", 120, "--match-columns", "cell_type", "--where", "condition=disease")
    stage1 = CellStore(str(simulated_cells))
    originals = list(CellStore(str(tmp_path / "p" / "train")))
    queries = list(CellStore(str(tmp_path / "q")))
    assert len(queries) > 60
    by_cells = {tuple(o["cell_indices"]): o for o in originals}
    vocab = Vocabulary.load(json.loads((tmp_path / "q" / "manifest.json").read_text())["vocabulary"]["path"])
    for query in queries:
        original = by_cells[tuple(query["cell_indices"])]
        new_cell = stage1[int(query["query_cell_index"])]
        old_cell = stage1[int(query["cell_indices"][-1])]
        assert new_cell["condition"] == "disease" and new_cell["cell_type"] == old_cell["cell_type"]
        assert abs(new_cell["time"] - old_cell["time"]) <= 120
        assert query["timelapse"] == new_cell["time"] - query["times"][-2] == query["times"][-1] - query["times"][-2]
        assert query["reference_timelapse"] == original["timelapse"]
        boq = int(np.flatnonzero(original["prompt_ids"] == vocab.boq_id)[0])
        assert np.array_equal(query["prompt_ids"][:boq + 1], original["prompt_ids"][:boq + 1])
        assert np.array_equal(query["prompt_ids"][boq + 1:-1], new_cell["input_ids"])
        assert query["response_ids"].tolist() == [vocab.time_token(query["timelapse"])]


def test_bad_paragraph_inputs(capsys, tmp_path, tiny_files, hsmm_cells):
    vocab, medians, write = tiny_files
    cells_no_time = tmp_path / "no_time"
    one_time = write("one_time.h5ad", [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0]], obs={"age": [5.0, 5.0]})
    cli("data", "tokenize", one_time, "--vocab", vocab, "--medians", medians, "--out", cells_no_time)
    assert main(["data", "paragraphs", str(cells_no_time), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "the cells have no time" in err and "--time-column" in err
    cli("data", "tokenize", one_time, "--vocab", vocab, "--medians", medians, "--out", tmp_path / "c1",
        "--time-column", "age")
    assert main(["data", "paragraphs", str(tmp_path / "c1"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no trajectory group has cells at two or more distinct times" in err and "groups_with_one_time" in err
    far = write("far.h5ad", [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0]], obs={"age": [0.0, 50.0]})
    cli("data", "tokenize", far, "--vocab", vocab, "--medians", medians, "--out", tmp_path / "c2",
        "--time-column", "age")
    assert main(["data", "paragraphs", str(tmp_path / "c2"), "--out", str(tmp_path / "o"), "--min-timepoints",
                 "2", "--num-examples", "5"]) == 2
    err = capsys.readouterr().err
    assert "group 'far'" in err and "outside the vocabulary's range -10..9" in err and "--clip" in err
    cli("data", "paragraphs", tmp_path / "c2", "--out", tmp_path / "clipped", "--min-timepoints", 2,
        "--num-examples", 20, "--clip")
    assert {int(e["timelapse"]) for e in CellStore(str(tmp_path / "clipped"))} <= {-10, 9}
    assert main(["data", "paragraphs", str(hsmm_cells[0]), "--out", str(tmp_path / "o"), "--vocab", str(vocab)]) == 2
    assert "different vocabulary" in capsys.readouterr().err


def test_simulated_age_is_learnable_from_expression(simulated_cells):
    """A ridge regression on log-normalized counts predicts held-out donors' ages: the truth is in the data."""
    sim = ad.read_h5ad(simulated_cells.parent / "sim.h5ad")
    x = sim.X.toarray()
    x = np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)
    age = sim.obs["age"].to_numpy()
    control = (sim.obs["condition"] == "control").to_numpy()
    donor = sim.obs["donor"].cat.codes.to_numpy()
    train, test = control & (donor % 2 == 0), control & (donor % 2 == 1)
    mean = x[train].mean(axis=0)
    a = x[train] - mean
    w = np.linalg.solve(a.T @ a + 30 * np.eye(a.shape[1]), a.T @ (age[train] - age[train].mean()))
    predicted = (x[test] - mean) @ w + age[train].mean()
    assert np.corrcoef(predicted, age[test])[0, 1] > 0.8
    disease = ~control
    shift = ((x[disease] - mean) @ w + age[train].mean() - age[disease]).mean()
    assert shift > 20  # disease donors look older (true acceleration 60; ridge shrinks it)
