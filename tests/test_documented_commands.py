"""The command lines of README.md, docs/*.md and tutorials/*.md as users copy them: every maxtoki command parses,
every training command loads its recipe with its overrides, and those that take seconds on tiny data run exactly as
shown (only paths swapped for tiny fixtures), wherever in the docs they are; every relative link resolves and the
README stays a short front door; also the documented options nothing else exercises."""

from __future__ import annotations

import json
import os
import pickle
import re
import shlex
import subprocess
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from maxtoki import storage
from maxtoki.cli import build_parser
from maxtoki.cli import main as cli_main
from maxtoki.data.paragraphs.cell_store import CellStore
from maxtoki.vocab import Vocabulary

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
DOCS = [README, *PAGES, *sorted((ROOT / "tutorials").glob("*.md"))]
README_LIMIT = 8 * 1024  # bytes: a first screen and a table of pages, the reference lives in docs/


@dataclass(frozen=True)
class DocCommand:
    doc: str
    line: int
    text: str  # continuations joined, whitespace collapsed, comment kept

    @property
    def words(self) -> list[str]:
        return shlex.split(self.text, comments=True)


def _fenced(text: str):
    """(line, command) of every command line in the ```bash blocks, ``\\`` continuations joined."""
    for block in re.finditer(r"^```(?:bash|sh|shell)\n(.*?)^```", text, re.M | re.S):
        first_line = text[:block.start()].count("\n") + 2
        pending, start = "", None
        for offset, line in enumerate(block.group(1).split("\n")):
            start = first_line + offset if start is None else start
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            command, line_number, pending, start = " ".join((pending + line).split()), start, "", None
            if command and not command.startswith("#"):
                yield line_number, command


def _inline(text: str):
    """(line, command) of every inline `maxtoki ... --option ...` span and `composer scripts/train.py RECIPE key=value`
    span (spans may wrap over lines)."""
    spans = r"`(maxtoki [^`]*--[^`]*|composer scripts/train\.py configs/\S+\.yaml [^`]*=[^`]*)`"
    for span in re.finditer(spans, text):
        yield text[:span.start()].count("\n") + 1, " ".join(span.group(1).split())


def documented_commands() -> list[DocCommand]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        name = str(doc.relative_to(ROOT))
        found += [DocCommand(name, line, command) for line, command in [*_fenced(text), *_inline(text)]]
    return found


COMMANDS = documented_commands()

# Command lines that are not meant to run as written, and why.
FRAGMENTS = {
    "maxtoki predict time --train-data s3://lab/paragraphs/train": "names one option of a command shown in full "
                                                                   "in docs/inference.md",
    "maxtoki generate --checkpoint CKPT --data eval/test --out generated/ [--sample --temperature T --top-k K "
    "--top-p P --seed S --max-new-tokens N]": "a synopsis with optional parts in brackets; its required part is "
                                              "parsed below",
}
# Commands of other programs: not run here, with the reason.
OTHER_PROGRAMS = {
    "export": "sets the shell's credentials for the commands after it",
    "docker": "needs Docker and a registry (tests/test_cloud_configs.py lints the Dockerfile)",
    "(umask": "writes the shell's credentials to a file for docker run --env-file",
    "mcli": "needs the MosaicML platform (tests/test_cloud_configs.py parses the run definitions with mcli)",
}
SCRIPTS = {
    "scripts/demo.sh": "the demo trains for about four minutes; tests/test_pipeline.py and the quickstart "
                       "notebook run the same pipeline smaller",
    "scripts/test.sh": "runs this test suite",
    "configs/gcloud/launch.sh": "creates or deletes VMs with gcloud; tests/test_cloud_configs.py runs it against "
                                "a stand-in gcloud, and its documented --dry-run runs below",
}


def kind(command: DocCommand) -> str:
    words = command.words
    if command.text in FRAGMENTS:
        return "fragment"
    if words[0] == "maxtoki":
        return "maxtoki"
    if "scripts/train.py" in words and words[0] in ("composer", "python"):
        return "training"
    if words[0] == "bash" and words[1] in SCRIPTS:
        return "script"
    if words[0] in OTHER_PROGRAMS:
        return "other"
    return "unknown"


def test_every_documented_command_is_accounted_for():
    """A new kind of command in the docs must be added to one of the lists above (run, parsed or skipped)."""
    unknown = [f"{c.doc}:{c.line}: {c.text}" for c in COMMANDS if kind(c) == "unknown"]
    assert not unknown, "documented commands this test does not know how to check:\n" + "\n".join(unknown)
    assert not set(FRAGMENTS) - {c.text for c in COMMANDS}, "a listed fragment is no longer in the docs"
    for script in SCRIPTS:
        assert (ROOT / script).is_file(), script


@pytest.mark.parametrize("command", [c for c in COMMANDS if kind(c) in ("maxtoki", "fragment")],
                         ids=lambda c: f"{c.doc}:{c.line}")
def test_documented_maxtoki_command_parses(command):
    words = command.words[1:]
    if kind(command) == "fragment" and "[" in command.text:  # the synopsis: its required part
        words = shlex.split(command.text.split("[", 1)[0])[1:]
    elif kind(command) == "fragment":
        pytest.skip(FRAGMENTS[command.text])
    try:
        build_parser().parse_args(words)
    except SystemExit as exc:  # argparse has printed which option it refused
        pytest.fail(f"{command.doc}:{command.line}: `{command.text}` no longer parses (exit {exc.code})")


@pytest.mark.parametrize("command", [c for c in COMMANDS if kind(c) == "training"], ids=lambda c: f"{c.doc}:{c.line}")
def test_documented_training_command_loads_its_recipe(command, monkeypatch):
    """The recipe exists, every ``key=value`` names a key the recipe has (a renamed variable would be silently
    ignored otherwise), and the merged recipe passes the check that training runs before it starts."""
    from omegaconf import OmegaConf

    from maxtoki.training import check_recipe_keys, load_recipe, parse_arguments

    words = command.words
    arguments = [w for w in words[words.index("scripts/train.py") + 1:] if w != "..."]  # "..." elides keys
    recipe, overrides = parse_arguments(arguments)
    base = OmegaConf.load(ROOT / recipe)
    missing = object()
    for override in overrides:
        key = override.split("=", 1)[0]
        assert OmegaConf.select(base, key, default=missing) is not missing, f"{recipe} has no key {key}"
    monkeypatch.chdir(ROOT)  # recipes are named relative to the repository, as the docs run them
    check_recipe_keys(load_recipe(recipe, overrides))


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text without fenced blocks and code spans, where brackets and ``#`` lines are not Markdown."""
    return re.sub(r"`[^`]*`", "", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_every_relative_link_of_the_docs_resolves():
    """Links and images in README.md, docs/, tutorials/ and benchmarks/README.md name files that exist, and
    headings that exist where they name one (a section moved to another page breaks its old anchors)."""
    broken = []
    for doc in [*DOCS, ROOT / "benchmarks/README.md"]:
        for target in LINK.findall(_prose(doc.read_text())):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            linked = (doc.parent / path).resolve() if path else doc
            if not linked.exists():
                broken.append(f"{doc.relative_to(ROOT)}: ({target}) names no file")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{doc.relative_to(ROOT)}: ({target}) names no heading of {linked.name}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_readme_is_a_short_front_door_to_every_docs_page():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, (f"README.md is {size:,} bytes, over {README_LIMIT:,}: move reference material to "
                                  "a docs/ page and link it from the README's table of pages")
    assert PAGES, "docs/ holds no pages"
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in LINK.findall(_prose(README.read_text()))}
    unlinked = [p.name for p in PAGES if p not in linked]
    assert not unlinked, f"docs pages the README's table of pages does not link: {unlinked}"
    for page in PAGES:
        title, purpose = page.read_text().split("\n\n", 2)[:2]
        assert title.startswith("# ") and "\n" not in title and "\n" not in purpose and purpose[0].isupper(), \
            f"{page.relative_to(ROOT)} starts with '# Title', a blank line and a one-line purpose"
    shown = {c.text.split("#")[0].strip() for c in COMMANDS if c.doc == "README.md" and kind(c) == "script"}
    assert {"bash scripts/demo.sh", "bash scripts/test.sh"} <= shown, "the README shows the two commands"
    picture = ROOT / "docs/images/predicted_vs_true.png"
    assert picture.resolve() in linked and len(picture.read_bytes()) < 100_000, "the README shows a small picture"


def documented(text: str) -> list[str]:
    """The words of a documented command given by its text (so a changed command fails here, by name)."""
    matches = [c for c in COMMANDS if c.text == text]
    assert matches, f"the docs no longer show `{text}`; update this test with the new command"
    return matches[0].words


def run(text: str, **swaps: str) -> None:
    """A documented command, run in-process with each word's prefix ``old`` swapped for ``new``."""
    words = documented(text)[1:]
    for old, new in swaps.items():
        words = [new + w[len(old):] if w.startswith(old) else w for w in words]
    assert cli_main(words) == 0, f"`{text}` failed"


def write_corpus(root: Path) -> ad.AnnData:
    """corpus/donor1.h5ad and donor2.h5ad: 10 donors x 3 ages x 4 cells of 40 genes, with every obs column the
    documented commands name; disease in donors d9 and d10."""
    rng = np.random.default_rng(0)
    genes = [f"ENSG{i:011d}" for i in range(1, 41)]
    rows, obs = [], []
    for donor in range(1, 11):
        for age in (240, 480, 720):
            for c in range(4):
                rows.append(rng.poisson(np.linspace(8, 0.2, 40) * (1 + age / 720 * (np.arange(40) % 4 == 0))))
                obs.append({"age": age, "age_months": age, "donor": f"d{donor}", "donor_id": f"d{donor}",
                            "cell_type": ["T", "B", "microglia", "T"][c], "sex": "fm"[donor % 2],
                            "condition": "disease" if donor > 8 else "control",
                            "disease": "pulmonary fibrosis" if donor > 8 else "normal",
                            "age_group": "young" if age < 400 else "old"})
    adata = ad.AnnData(X=sp.csr_matrix(np.array(rows, dtype=np.float32)),
                       obs=pd.DataFrame(obs, index=[f"c{i}" for i in range(len(obs))]), var=pd.DataFrame(index=genes))
    (root / "corpus").mkdir()
    adata[:60].copy().write_h5ad(root / "corpus/donor1.h5ad")
    adata[60:].copy().write_h5ad(root / "corpus/donor2.h5ad")
    return adata


def save_random_llama(vocab: Vocabulary, out: Path, context: int = 256) -> None:
    """A stand-in for a stage-2 model exported elsewhere (its config says stage 2 trained its time tokens)."""
    import torch
    from transformers import LlamaForCausalLM

    from maxtoki.model.sizes import llama_config

    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config("tiny", len(vocab), context, vocab.pad_id, vocab.bos_id, vocab.eos_id))
    model.config.maxtoki = {"objective": "temporal"}
    model.save_pretrained(out)


@pytest.mark.s3
def test_documented_commands_run_on_tiny_data(tmp_path, monkeypatch, s3_server, capsys):
    """The commands of the README, docs/ and the guide in the order a user meets them, in a directory holding tiny
    stand-ins for the files they name."""
    monkeypatch.chdir(tmp_path)
    corpus = write_corpus(tmp_path)

    # stage-1 data
    run("maxtoki data medians corpus/ --out medians.json --workers 8")
    assert sorted(json.loads(Path("medians.json").read_text())) == list(corpus.var_names)
    run("maxtoki data vocab --medians medians.json --out vocab.json --max-time 1500")
    vocab = Vocabulary.load("vocab.json")
    assert len(vocab) == 4 + 40 + 3000 + 2 and vocab.time_range == (-1500, 1499)
    run("maxtoki data tokenize corpus/ --vocab vocab.json --medians medians.json --out s3://bucket/cells "
        "--time-column age_months --group-columns donor_id --keep-obs cell_type sex --workers 8",
        **{"s3://bucket/": "s3://maxtoki-test/readme/"})
    remote = list(CellStore("s3://maxtoki-test/readme/cells", str(tmp_path / "cache")))
    assert sorted(s["cell_id"] for s in remote) == sorted(corpus.obs_names)
    by_id = corpus.obs.loc[[s["cell_id"] for s in remote]]
    assert [s["group"] for s in remote] == by_id["donor_id"].tolist()
    assert [s["time"] for s in remote] == by_id["age_months"].astype(float).tolist()
    assert [s["sex"] for s in remote] == by_id["sex"].tolist()
    # the cells the stage-2 and analysis commands read as cells/ (a fixture: they keep the columns those name)
    assert cli_main(["data", "tokenize", "corpus/", "--vocab", "vocab.json", "--medians", "medians.json", "--out",
                     "cells", "--time-column", "age_months", "--group-columns", "donor_id", "--keep-obs",
                     "cell_type", "condition", "donor", "age_group"]) == 0
    capsys.readouterr()
    run("maxtoki data inspect demo-output/cells", **{"demo-output/cells": "cells"})
    summary = capsys.readouterr().out
    assert "cells: 120 written of 120 read; dropped: none" in summary
    assert "cells per time: 240: 40, 480: 40, 720: 40" in summary

    # stage-2 data
    run("maxtoki data paragraphs cells/ --out eval/ --eval --split train=0.8,val=0.1,test=0.1 # prompts apart")
    splits = json.loads(Path("eval/splits.json").read_text())["groups"]
    assert sorted(len(g) for g in splits.values()) == [1, 1, 8]
    assert sorted(sum(splits.values(), [])) == sorted(f"d{i}" for i in range(1, 11))
    assert {e["group"] for e in CellStore("eval/test")} == set(splits["test"])
    run("maxtoki data queries eval/test --cells cells/ --where condition=disease --match-columns cell_type "
        "--match-time-tolerance 24 --out disease-queries/")
    cells = {s["cell_id"]: s for s in CellStore("cells")}
    queries = list(CellStore("disease-queries"))
    assert len(queries) == sum(int(e["task"]) == 1 for e in CellStore("eval/test"))
    for query in queries:
        cell = cells[str(query["query_cell_id"])]
        assert cell["condition"] == "disease" and abs(cell["time"] - query["query_time"]) <= 24

    # a released model, imported, then asked
    Path("token_dictionary.pkl").write_bytes(pickle.dumps(dict(vocab.token_to_id)))
    save_random_llama(vocab, tmp_path / "released-217m")
    run("maxtoki import-hf released-217m/ --vocab token_dictionary.pkl --time-unit months --out maxtoki-217m/")
    metadata = json.loads(Path("maxtoki-217m/maxtoki.json").read_text())
    assert metadata["time_unit"] == "months" and metadata["time_tokens_trained"] is True
    run("maxtoki predict time --checkpoint runs/temporal/latest-rank0.pt --data eval/test --train-data "
        "paragraphs/train --out predictions/",
        **{"runs/temporal/latest-rank0.pt": "maxtoki-217m/", "paragraphs/train": "eval/train"})
    table = pd.read_csv("predictions/predictions.csv")
    assert len(table) == len(queries) and table["predicted_timelapse"].between(-1500, 1499).all()
    run("maxtoki embed --checkpoint CKPT --data cells/ --out cells.h5ad", CKPT="maxtoki-217m/")
    embedded = ad.read_h5ad("cells.h5ad")
    assert embedded.obsm["X_maxtoki"].shape == (120, 64) and np.isfinite(embedded.obsm["X_maxtoki"]).all()

    # the analyses
    corpus.write_h5ad("lung.h5ad")
    run('maxtoki analyze age-acceleration --checkpoint maxtoki-217m/ --data lung.h5ad --medians medians.json '
        '--time-column age --donor-column donor --match-columns cell_type --condition-column disease --case '
        '"pulmonary fibrosis" --control normal --age-tolerance 24 --train-data paragraphs/train --out ipf/',
        **{"paragraphs/train": "eval/train"})
    acceleration = json.loads(Path("ipf/acceleration.json").read_text())
    assert acceleration["case_donors"] == 2 and acceleration["pairs"] > 0
    run("maxtoki analyze perturb --checkpoint runs/temporal/latest-rank0.pt --data cells/ --donor-column donor "
        "--match-columns cell_type --query-where age_group=young --top-genes 500 --query-cells 200 --out screen/",
        **{"runs/temporal/latest-rank0.pt": "maxtoki-217m/"})
    effects = pd.read_csv("screen/effects.csv")
    assert set(effects["gene"]) <= set(vocab.genes) and set(effects["mode"]) == {"delete", "overexpress"}
    assert {"p_value", "fdr", "shift_beyond_null"} <= set(effects.columns)  # NaN here: the panel is every gene
    run("maxtoki analyze perturb --checkpoint maxtoki-217m/ --data cells/ --readout embedding --start-state "
        "age_group=old --goal-state age_group=young --top-genes 500 --modes delete overexpress --query-cells 200 "
        "--out goal-screen/")
    effects = pd.read_csv("goal-screen/effects.csv")
    assert set(effects["mode"]) == {"delete", "overexpress"} and len(effects) == 2 * effects["gene"].nunique()
    assert json.loads(Path("goal-screen/perturb.json").read_text())["readout"] == "embedding"

    # object storage, as docs/scale-out.md and the training guide show it (bucket names swapped)
    run("maxtoki data tokenize corpus/ --vocab vocab.json --medians medians.json --out s3://lab/cells "
        "--time-column age", **{"s3://lab/": "s3://maxtoki-test/lab/"})
    run("maxtoki data paragraphs s3://lab/cells --out s3://lab/paragraphs --split train=0.9,val=0.1",
        **{"s3://lab/": "s3://maxtoki-test/lab/"})
    # without --group-columns each input file is one trajectory: one file for training, one for validation
    dealt = json.loads(storage.download_bytes("s3://maxtoki-test/lab/paragraphs/splits.json"))["groups"]
    assert sorted(sum(dealt.values(), [])) == ["donor1", "donor2"] and len(dealt["val"]) == 1
    run("maxtoki data medians corpus/ --out medians.json --workers 16")
    run("maxtoki data vocab --medians medians.json --out vocab.json")
    assert Vocabulary.load("vocab.json").sha256 == vocab.sha256  # --max-time 1500 is the default
    run("maxtoki data tokenize corpus/ --vocab vocab.json --medians medians.json --out s3://lab/cells "
        "--time-column age --group-columns donor cell_type --workers 16", **{"s3://lab/": "s3://maxtoki-test/guide/"})
    groups = {s["group"] for s in CellStore("s3://maxtoki-test/guide/cells", str(tmp_path / "c3"))}
    assert groups == {f"{d}|{t}" for d in corpus.obs["donor"].unique() for t in ("T", "B", "microglia")}

    # the Python example of docs/data.md, as shown
    example = re.search(r"```python\n(.*?)```", (ROOT / "docs/data.md").read_text(), re.S).group(1)
    assert "vocab.decode(cells.input_ids[0][:5])" in example
    namespace: dict = {}
    exec(compile(example.replace("vocab.decode(", "decoded = vocab.decode("), "docs/data.md", "exec"), namespace)
    first = namespace["cells"].input_ids[0]
    names = {i: token for token, i in namespace["vocab"].token_to_id.items()}
    assert namespace["decoded"] == ["<bos>", *[names[int(t)] for t in first[1:5]]]
    assert all(token.startswith("ENSG") for token in namespace["decoded"][1:])


def test_the_documented_dry_run_of_the_cloud_launcher():
    """The guide's ``launch.sh train --dry-run`` with the credentials of the ``export`` line before it."""
    words = documented("bash configs/gcloud/launch.sh train --project P --zone us-central1-a --nodes 2 --dry-run "
                       "--recipe configs/pretrain/1b.yaml --image REGISTRY/maxtoki:latest -- "
                       "variables.data=s3://lab/cells variables.vocab=s3://lab/cells/vocab.json "
                       "variables.save_folder=s3://lab/runs/1b")
    exported = documented("export AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... AWS_DEFAULT_REGION=us-east-1 "
                          "WANDB_API_KEY=...")[1:]
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), **dict(w.split("=", 1) for w in exported)}
    result = subprocess.run(words, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for rank in (0, 1):
        assert (f"composer --world_size 16 --node_rank {rank} --master_addr maxtoki-0.us-central1-a.c.P.internal "
                "--master_port 29500 --nproc 8 scripts/train.py configs/pretrain/1b.yaml variables.data=s3://lab/cells "
                "variables.vocab=s3://lab/cells/vocab.json variables.save_folder=s3://lab/runs/1b") in result.stdout
    assert "=..." not in result.stdout  # the secrets' values never show


def cli(*argv) -> None:
    assert cli_main([str(a) for a in argv]) == 0


def test_version_is_the_installed_package(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"maxtoki {version('maxtoki')}\n"


def test_compressed_shards_hold_the_same_cells(tmp_path, tiny_files):
    vocab, medians, write = tiny_files
    data = write("a.h5ad", [[3, 1, 0, 2, 0], [0, 4, 1, 0, 1], [1, 1, 1, 1, 1]])
    for compression in ([], ["--compression", "zstd"]):
        cli("data", "tokenize", data, "--vocab", vocab, "--medians", medians, "--out",
            tmp_path / ("zstd" if compression else "plain"), *compression)
    index = json.loads((tmp_path / "zstd/part-00000/index.json").read_text())
    assert [shard["compression"] for shard in index["shards"]] == ["zstd"]
    assert (tmp_path / "zstd/part-00000/shard.00000.mds.zstd").exists()
    plain, packed = list(CellStore(str(tmp_path / "plain"))), list(CellStore(str(tmp_path / "zstd")))
    assert [s["input_ids"].tolist() for s in plain] == [s["input_ids"].tolist() for s in packed]


def test_the_bundled_gencode_table_maps_symbols_and_resolves_ambiguous_ones(tmp_path):
    """A2MP1 has two Ensembl IDs in GENCODE v44: the one in the vocabulary wins, else the smallest."""
    from maxtoki.datasets import example_path

    gencode = Path(example_path("hsmm")).parent / "gencode_v44_gene_id2name.csv"
    ids = {row.split(",")[0] for row in gencode.read_text().splitlines() if row.endswith(",A2MP1")}
    assert ids == {"ENSG00000256069", "ENSG00000291190"}
    tables = {"TP53": "ENSG00000141510", "GAPDH": "ENSG00000111640"}
    adata = ad.AnnData(X=sp.csr_matrix(np.array([[5, 3, 1], [2, 6, 4]], dtype=np.float32)),
                       var=pd.DataFrame(index=["TP53", "gapdh", "A2MP1"]),
                       obs=pd.DataFrame(index=["c0", "c1"]))
    adata.write_h5ad(tmp_path / "symbols.h5ad")
    cli("data", "medians", tmp_path / "symbols.h5ad", "--gene-mapping", gencode, "--out", tmp_path / "m.json")
    medians = json.loads((tmp_path / "m.json").read_text())
    assert sorted(medians) == sorted([*tables.values(), "ENSG00000256069"])  # no vocabulary: the smallest ID
    Vocabulary.build([*tables.values(), "ENSG00000291190"]).save(tmp_path / "v.json")
    (tmp_path / "m2.json").write_text(json.dumps({**{g: 1.0 for g in tables.values()}, "ENSG00000291190": 1.0}))
    cli("data", "tokenize", tmp_path / "symbols.h5ad", "--gene-mapping", gencode, "--vocab", tmp_path / "v.json",
        "--medians", tmp_path / "m2.json", "--out", tmp_path / "cells")
    vocab = Vocabulary.load(tmp_path / "v.json")
    decoded = [vocab.decode(s["input_ids"]) for s in CellStore(str(tmp_path / "cells"))]
    assert decoded == [["<bos>", tables["TP53"], tables["GAPDH"], "ENSG00000291190", "<eos>"],
                       ["<bos>", tables["GAPDH"], "ENSG00000291190", tables["TP53"], "<eos>"]]


def test_the_shipped_data_config_with_the_command_line_winning(tmp_path, hsmm_reference, monkeypatch):
    """configs/data/hsmm_myoblast.yaml as its comment shows it, then with options that override the file."""
    vocab, medians = hsmm_reference
    config = ROOT / "configs/data/hsmm_myoblast.yaml"
    shown = re.search(r"#\s+(maxtoki data tokenize --config .*)", config.read_text()).group(1)
    words = [{"V": str(vocab), "M": str(medians), "DIR": str(tmp_path / "cells")}.get(w, w) for w in shlex.split(shown)]
    monkeypatch.chdir(ROOT)  # the file names its input relative to the repository
    cli(*words[1:])
    cli(*words[1:-1], tmp_path / "short", "--model-input-size", 16, "--time-column", "state", "--keep-obs", "media")
    full, short = list(CellStore(str(tmp_path / "cells"))), list(CellStore(str(tmp_path / "short")))
    assert len(full) == len(short) == 271
    assert sorted({s["time"] for s in full}) == [0.0, 24.0, 48.0, 72.0] and "state" in full[0]
    assert max(len(s["input_ids"]) for s in full) > 16 and max(len(s["input_ids"]) for s in short) == 16
    assert {s["time"] for s in short} <= {1.0, 2.0, 3.0} and "state" not in short[0] and "media" in short[0]
    assert all(np.array_equal(a["input_ids"][:15], b["input_ids"][:15]) for a, b in zip(full, short))


@pytest.fixture
def uneven_cells(tmp_path, tiny_files):
    """Cells without a group column, donors kept as obs: donor a has 40 cells, donor b 10 (both at 3 times)."""
    vocab, medians, write = tiny_files
    donors = ["a"] * 40 + ["b"] * 10
    counts = np.random.default_rng(1).poisson(3, (50, 5)) + 1
    data = write("uneven.h5ad", counts, obs={"donor": donors, "day": [i % 3 for i in range(50)]})
    cli("data", "tokenize", data, "--vocab", vocab, "--medians", medians, "--out", tmp_path / "cells",
        "--time-column", "day", "--keep-obs", "donor")
    return tmp_path / "cells"


def test_paragraphs_balance_group_columns_and_overwrite(tmp_path, uneven_cells, capsys):
    def share_of_a(name, *options):
        cli("data", "paragraphs", uneven_cells, "--out", tmp_path / name, "--num-examples", 2000,
            "--group-columns", "donor", "--min-timepoints", 2, *options)
        groups = [e["group"] for e in CellStore(str(tmp_path / name))]
        assert set(groups) == {"a", "b"}  # groups from the kept column, not the one dataset
        return groups.count("a") / len(groups)

    assert share_of_a("by-size") == pytest.approx(0.8, abs=0.04)  # proportional to 40:10 cells
    assert share_of_a("uniform", "--balance", 1) == pytest.approx(0.5, abs=0.04)
    assert share_of_a("between", "--balance", 0.5) == pytest.approx(2 / 3, abs=0.04)  # sqrt(40):sqrt(10)
    capsys.readouterr()
    argv = ["data", "paragraphs", str(uneven_cells), "--out", str(tmp_path / "by-size"), "--num-examples", "10"]
    assert cli_main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert len(CellStore(str(tmp_path / "by-size"))) == 2000  # refused: the earlier output is intact
    cli(*argv, "--overwrite")
    assert len(CellStore(str(tmp_path / "by-size"))) == 10


@pytest.mark.parametrize("kind", ["cells", "paragraphs"])
def test_loaders_with_worker_processes_read_the_same_samples(tmp_path, uneven_cells, tiny_files, kind):
    from maxtoki.data.loaders import build_loader

    vocab, _, _ = tiny_files
    data = uneven_cells
    if kind == "paragraphs":
        cli("data", "paragraphs", uneven_cells, "--out", tmp_path / "p", "--num-examples", 40, "--group-columns",
            "donor", "--min-timepoints", 2)
        data = tmp_path / "p"

    def rows(workers):
        spec = build_loader(kind, {"remote": str(data), "vocab": str(vocab), "max_seq_len": 64, "shuffle": False},
                            device_batch_size=4, drop_last=False, num_workers=workers)
        batches = list(spec.dataloader)
        return sorted(tuple(row[mask.bool()].tolist()) for batch in batches
                      for row, mask in zip(batch["input_ids"], batch["attention_mask"]))

    single = rows(0)
    assert len(single) == (50 if kind == "cells" else 40)
    assert rows(2) == single


def test_token_ids_above_65536_are_stored_as_int32(tmp_path):
    """A vocabulary of 70,000 genes: its last genes' ids do not fit uint16, and survive tokenize and paragraphs."""
    genes = [f"ENSG{i:011d}" for i in range(1, 70_001)]
    vocab = Vocabulary.build(genes)
    vocab.save(tmp_path / "v.json")
    (tmp_path / "m.json").write_text(json.dumps({g: 1.0 for g in genes}))
    chosen = [genes[0], genes[40_000], genes[69_998], genes[69_999]]  # ids 4, 40,004, 70,002 and 70,003
    counts = np.array([[4, 3, 2, 1], [1, 2, 3, 4], [2, 4, 1, 3]], dtype=np.float32)
    adata = ad.AnnData(X=sp.csr_matrix(counts), var=pd.DataFrame(index=chosen),
                       obs=pd.DataFrame({"t": [0, 1, 2]}, index=["c0", "c1", "c2"]))
    adata.write_h5ad(tmp_path / "big.h5ad")
    cli("data", "tokenize", tmp_path / "big.h5ad", "--vocab", tmp_path / "v.json", "--medians", tmp_path / "m.json",
        "--out", tmp_path / "cells", "--time-column", "t")
    index = json.loads((tmp_path / "cells/part-00000/index.json").read_text())
    assert dict(zip(index["shards"][0]["column_names"], index["shards"][0]["column_encodings"]))["input_ids"] == \
        "ndarray:int32"
    cells = list(CellStore(str(tmp_path / "cells")))
    ids = [vocab[g] for g in chosen]
    order = [np.argsort(-row, kind="stable") for row in counts]
    assert [c["input_ids"].tolist() for c in cells] == [[vocab.bos_id, *[ids[i] for i in o], vocab.eos_id]
                                                       for o in order]
    cli("data", "paragraphs", tmp_path / "cells", "--out", tmp_path / "p", "--num-examples", 6, "--min-timepoints", 2)
    tokens = np.concatenate([e["input_ids"] for e in CellStore(str(tmp_path / "p"))])
    assert tokens.dtype == np.int32 and tokens.max() >= 70_002
