"""What a person at the console sees: library notices through logging, progress bars on a terminal, and
``--quiet``, which leaves nothing but errors."""

import contextlib
import io
import json
import logging
import os

import pytest

from maxtoki.cli import main
from maxtoki.console import progress_bar, set_quiet
from maxtoki.training import remove_unfinished_checkpoints


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def tokenize(tiny_files, out, *extra) -> list[str]:
    vocab, medians, write = tiny_files
    cells = write("cells.h5ad", [[1, 0, 2, 0, 1], [0, 3, 1, 1, 0], [2, 2, 0, 0, 1]], obs={"age": [1.0, 2.0, 3.0]})
    return ["data", "tokenize", str(cells), "--vocab", str(vocab), "--medians", str(medians), "--out", str(out),
            "--time-column", "age", *extra]


def written_cells(out) -> int:
    return json.loads((out / "manifest.json").read_text())["cells"]["written"]


@pytest.mark.parametrize("spelling", ["maxtoki --quiet data tokenize", "maxtoki data tokenize -q"])
def test_quiet_prints_nothing_and_still_writes_the_output(capfd, tmp_path, tiny_files, spelling):
    argv = tokenize(tiny_files, tmp_path / "out")
    argv = ["--quiet", *argv] if spelling.startswith("maxtoki --quiet") else [*argv, "-q"]
    assert main(argv) == 0
    assert capfd.readouterr() == ("", "")
    assert written_cells(tmp_path / "out") == 3
    assert main(tokenize(tiny_files, tmp_path / "loud")) == 0
    assert capfd.readouterr().out.startswith("wrote 3 of 3 cells")


def test_an_error_under_quiet_still_prints_its_one_line(capfd, tmp_path):
    assert main(["--quiet", "data", "medians", str(tmp_path / "missing.h5ad"), "--out", str(tmp_path / "m.json")]) == 2
    out, err = capfd.readouterr()
    assert out == "" and err.startswith("maxtoki: error: ") and err.count("\n") == 1 and "missing.h5ad" in err


def test_data_commands_draw_a_progress_bar_on_a_terminal_unless_quiet(tmp_path, tiny_files):
    drawn = {}
    for name, extra in (("default", ()), ("quiet", ("--quiet",))):
        with contextlib.redirect_stderr(Terminal()) as terminal, contextlib.redirect_stdout(io.StringIO()):
            assert main(tokenize(tiny_files, tmp_path / name, *extra)) == 0
        drawn[name] = terminal.getvalue()
        assert written_cells(tmp_path / name) == 3
    assert "tokenize: 100%" in drawn["default"] and "3.00/3.00" in drawn["default"]
    assert drawn["quiet"] == ""
    set_quiet(True)  # the same switch, from Python
    try:
        with contextlib.redirect_stderr(Terminal()), progress_bar(3, "cells") as bar:
            assert bar.disable
    finally:
        set_quiet(False)


def test_library_notices_print_as_maxtoki_lines_and_are_silenced_by_quiet(capsys, tmp_path):
    for batch in (4, 8):
        (tmp_path / f"ep0-ba{batch}-rank0.pt").write_bytes(b"")
    os.symlink("ep0-ba4-rank0.pt", tmp_path / "latest-rank0.pt")
    assert remove_unfinished_checkpoints(str(tmp_path)) == ["ep0-ba8-rank0.pt"]
    logging.getLogger("maxtoki.storage").warning("a warning")
    assert capsys.readouterr() == ("maxtoki: removed checkpoints of an interrupted save: ep0-ba8-rank0.pt\n",
                                   "maxtoki: a warning\n")
    set_quiet(True)
    try:
        logging.getLogger("maxtoki.training").info("a notice")
        logging.getLogger("maxtoki.storage").warning("a warning")
    finally:
        set_quiet(False)
    assert capsys.readouterr() == ("", "")
