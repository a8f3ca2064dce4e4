"""Every kind of bad input gets one clear message naming the file and what to do; nothing half-written."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from maxtoki.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err


def tokenize(capsys, vocab, medians, inputs, out, *extra):
    return run(capsys, "data", "tokenize", *inputs, "--vocab", vocab, "--medians", medians, "--out", out, *extra)


@pytest.mark.parametrize("values, problem, advice", [
    ([[0.69, 1.1, 0, 0, 0]], "non-integer values", "--allow-non-integer"),
    ([[1, -2, 0, 0, 0]], "negative values", "raw counts"),
    ([[1, np.nan, 0, 0, 0]], "NaN or infinite", "Fix or remove"),
    ([[1, np.inf, 0, 0, 0]], "NaN or infinite", "Fix or remove"),
])
def test_invalid_values_are_rejected_by_tokenize_and_medians(capsys, tmp_path, tiny_files, values, problem, advice):
    vocab, medians, write = tiny_files
    path = write("bad.h5ad", [[1, 2, 0, 0, 0]] * 3 + values)
    code, err = tokenize(capsys, vocab, medians, [path], tmp_path / "out")
    assert code == 2
    assert str(path) in err and problem in err and advice in err
    assert "cell 'cell3'" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))
    code, err = run(capsys, "data", "medians", path, "--out", tmp_path / "m.json")
    assert code == 2 and str(path) in err and problem in err
    assert not (tmp_path / "m.json").exists()


def test_non_integer_values_are_accepted_when_allowed(capsys, tmp_path, tiny_files):
    vocab, medians, write = tiny_files
    path = write("fpkm.h5ad", [[0.5, 2.25, 0, 0, 0]])
    code, _ = tokenize(capsys, vocab, medians, [path], tmp_path / "out", "--allow-non-integer")
    assert code == 0


def test_missing_columns_list_what_exists(capsys, tmp_path, tiny_files):
    vocab, medians, write = tiny_files
    path = write("cells.h5ad", [[1, 0, 0, 0, 0]], obs={"age": [3.0], "donor": ["d1"]})
    code, err = tokenize(capsys, vocab, medians, [path], tmp_path / "o1", "--gene-id-column", "ensembl")
    assert code == 2 and str(path) in err and "no gene-id column 'ensembl' in var" in err
    code, err = tokenize(capsys, vocab, medians, [path], tmp_path / "o2", "--time-column", "hours")
    assert code == 2 and "no obs column 'hours'" in err and "age, donor" in err
    code, err = tokenize(capsys, vocab, medians, [path], tmp_path / "o3", "--group-columns", "patient")
    assert code == 2 and "no obs column 'patient'" in err and "age, donor" in err


def test_non_numeric_time_column(capsys, tmp_path, tiny_files):
    vocab, medians, write = tiny_files
    path = write("cells.h5ad", [[1, 0, 0, 0, 0]], obs={"age": ["day3"]})
    code, err = tokenize(capsys, vocab, medians, [path], tmp_path / "o", "--time-column", "age")
    assert code == 2 and "'age' must be numeric" in err and "day3" in err


def test_no_gene_in_the_vocabulary_shows_both_sides(capsys, tmp_path, tiny_files):
    vocab, medians, write = tiny_files
    path = write("symbols.h5ad", [[1, 2]], var_names=["TSPAN6", "TNMD"])
    code, err = tokenize(capsys, vocab, medians, [path], tmp_path / "o")
    assert code == 2 and str(path) in err
    assert "none of its 2 gene IDs is in the vocabulary" in err and "TSPAN6" in err and "ENSG00000000001" in err
    assert "--gene-mapping" in err


def test_corrupt_and_truncated_files(capsys, tmp_path, tiny_files, hsmm_path):
    vocab, medians, _ = tiny_files
    garbage = tmp_path / "garbage.h5ad"
    garbage.write_bytes(b"this is not an HDF5 file" * 100)
    truncated = tmp_path / "truncated.h5ad"
    truncated.write_bytes(hsmm_path.read_bytes()[: hsmm_path.stat().st_size // 2])
    for path in (garbage, truncated):
        code, err = tokenize(capsys, vocab, medians, [path], tmp_path / "o")
        assert code == 2 and str(path) in err and "corrupt" in err and "Traceback" not in err
        code, err = run(capsys, "data", "medians", path, "--out", tmp_path / "m.json")
        assert code == 2 and str(path) in err and "corrupt" in err


def test_missing_inputs_and_bad_vocab_or_medians(capsys, tmp_path, tiny_files):
    vocab, medians, write = tiny_files
    path = write("ok.h5ad", [[1, 0, 0, 0, 0]])
    code, err = tokenize(capsys, vocab, medians, [tmp_path / "nope.h5ad"], tmp_path / "o")
    assert code == 2 and "nope.h5ad: no such file or directory" in err
    bad_medians = tmp_path / "bad_medians.json"
    bad_medians.write_text(json.dumps({"ENSG00000000001": 0}))
    code, err = tokenize(capsys, vocab, bad_medians, [path], tmp_path / "o")
    assert code == 2 and "bad_medians.json" in err and "must be positive" in err
    (tmp_path / "empty").mkdir()
    code, err = tokenize(capsys, vocab, medians, [tmp_path / "empty"], tmp_path / "o")
    assert code == 2 and "holds no .h5ad or .h5 files" in err


def test_existing_output_is_refused_unless_overwrite(capsys, tmp_path, tiny_files):
    vocab, medians, write = tiny_files
    good = write("good.h5ad", [[1, 0, 0, 0, 0], [0, 0, 3, 0, 0]])
    out = tmp_path / "cells"
    assert tokenize(capsys, vocab, medians, [good], out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, err = tokenize(capsys, vocab, medians, [good], out)
    assert code == 2 and "holds a finished output" in err and "--overwrite" in err
    # a failing rerun with --overwrite leaves the earlier output intact
    bad = write("bad.h5ad", [[0.5, 0, 0, 0, 0]])
    code, err = tokenize(capsys, vocab, medians, [good, bad], out, "--overwrite")
    assert code == 2 and "non-integer" in err
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.glob(".cells.*"))
    # files without a manifest are not maxtoki's (its unfinished runs write beside the output, not in it)
    shutil.rmtree(out)
    (out / "part-00000").mkdir(parents=True)
    (out / "part-00000" / "shard.00000.mds").write_bytes(b"partial")
    code, err = tokenize(capsys, vocab, medians, [good], out)
    assert code == 2 and err == (f"maxtoki: error: {out}: holds files but no manifest.json, so maxtoki did not write "
                                 "them (its unfinished runs leave nothing there); choose another --out, or pass "
                                 "--overwrite to delete them\n")
    assert (out / "part-00000" / "shard.00000.mds").read_bytes() == b"partial"
    assert tokenize(capsys, vocab, medians, [good], out, "--overwrite")[0] == 0
    assert not (out / "part-00000" / "shard.00000.mds").read_bytes() == b"partial"
    assert json.loads((out / "manifest.json").read_text())["cells"]["written"] == 2


def test_stale_staging_of_a_killed_run_is_cleaned(capsys, tmp_path, tiny_files):
    vocab, medians, write = tiny_files
    good = write("good.h5ad", [[1, 0, 0, 0, 0]])
    stale = tmp_path / ".cells.partial-999999999-deadbeef"
    stale.mkdir()
    assert tokenize(capsys, vocab, medians, [good], tmp_path / "cells")[0] == 0
    assert not stale.exists()


def test_command_line_errors_print_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "maxtoki.cli", "data", "medians", str(tmp_path / "missing.h5ad"),
                             "--out", str(tmp_path / "m.json")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"maxtoki: error: {tmp_path / 'missing.h5ad'}: no such file or directory"
