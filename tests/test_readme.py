"""The README runs as written.

Every ``python -m pipelines...`` line of the README's shell blocks (continuation lines joined,
comments dropped) composes with its pipeline's config (fast), and runs through the real command
line with ``debug=tiny`` appended, exiting 0 or with the error documented for it in ``EXPECTED``
(slow). The lines run in one working folder in README order where one reads what another wrote
(``hydra.run.dir=outputs/...``), other lines three at a time. The folder holds what the README
assumes a user has: a ``make run`` output for ``<run>`` (made here with ``debug=tiny``), the
``items.csv`` / ``log.csv`` that ``bench/synthetic_shop.py`` writes, and in place of what ``make
smollm2`` writes the toy task's tiny chat reasoner (it writes a trace for every item, in seconds). The README's Python block runs against the same folder. The
version the package reports is pyproject's, and CHANGELOG.md has a section for it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shlex
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from omegaconf import DictConfig

import tte_recsys
from tests.helpers import ROOT, run_module
from tte_recsys.reasoner_training.toy import build_toy_models
from tte_recsys.runs import check_overrides

README = (ROOT / "README.md").read_text()

# Lines that, with debug=tiny, end in a documented error instead of exit 0, and why.
EXPECTED = {
    # debug=tiny trains on the toy task, which has no split to score retrieval on
    "score=true": r"error: .* needs a dataset split \(not the toy task\)",
    "method=score": r"error: .* needs a dataset split \(not the toy task\)",
    # debug=tiny's Amazon sample (60 users) leaves too few items with train interactions for the
    # id prior's ridge fit, which the MovieLens sample has
    "train_i2i experiment=tte_smollm2 data=amazon_office": r"error: id prior: \d+ items have >= 5 train interactions",
}
# A server runs until it is stopped: its lines are composed here, and run by its own tests.
SERVERS = ("pipelines.serve",)
# `<the path and column overrides>` names these keys of the README's first tabular command
PATH_AND_COLUMNS = (
    "data.adapter.items_path",
    "data.adapter.interactions_path",
    "data.adapter.item_columns",
    "data.adapter.interaction_columns",
)


def shell_lines(text: str) -> list[str]:
    """Every ``python -m pipelines.`` command of the text's bash blocks, one line each."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if line.strip().startswith("python -m pipelines."):
                lines.append(line.strip())
    return lines


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def _key(arg: str) -> str:
    return arg.split("=", 1)[0]


def commands(text: str, run_dir: str) -> list[tuple[str, list[str]]]:
    """(module, args) of every README command, its placeholders filled: ``<run>`` with
    ``run_dir``, the tabular example's ``<the overrides above>`` and ``<the path and column
    overrides>`` with the overrides of the README's first ``data=tabular`` command."""
    lines = shell_lines(text)
    tabular = next(shlex.split(x, comments=True)[3:] for x in lines if " data=tabular " in x)
    above = [a for a in tabular if a != "data=tabular"]
    fill = {
        "<the overrides above>": shlex.join(above),
        "<the path and column overrides>": shlex.join([a for a in above if _key(a) in PATH_AND_COLUMNS]),
    }
    out = []
    for line in lines:
        for placeholder, value in fill.items():
            line = line.replace(placeholder, value)
        argv = shlex.split(line, comments=True)
        args = [f"model_dir={run_dir}" if _key(a) == "model_dir" and "<run>" in a else a for a in argv[3:]]
        left = [a for a in args if "<" in a]
        assert not left, f"{line}: a placeholder this test does not fill: {left}"
        out.append((argv[2], args))
    return out


def _chains(cmds: list[tuple[str, list[str]]]) -> list[list[int]]:
    """README order kept where a command reads a folder an earlier one writes (its relative
    ``hydra.run.dir``); the rest are independent chains."""
    writes = {
        i: a.split("=", 1)[1]
        for i, (_, args) in enumerate(cmds)
        for a in args
        if _key(a) == "hydra.run.dir" and not a.split("=", 1)[1].startswith("/")
    }
    chain_of: dict[int, int] = {}
    chains: list[list[int]] = []
    for j, (_, args) in enumerate(cmds):
        values = [a.split("=", 1)[1] for a in args if "=" in a and _key(a) != "hydra.run.dir"]
        after = [
            i
            for i, out in writes.items()
            if i < j and any(v == out or v.startswith(out + "/") for v in values)
        ]
        if after:
            chain_of[j] = chain_of[max(after)]
            chains[chain_of[j]].append(j)
        else:
            chain_of[j] = len(chains)
            chains.append([j])
    return chains


def _config_name(module: str) -> str:
    return module.removeprefix("pipelines.")


def test_readme_names_its_commands() -> None:
    lines = shell_lines(README)
    assert len(lines) >= 15, lines
    assert any("\\" in b for b in re.findall(r"```bash\n(.*?)```", README, re.S))  # continuations joined
    assert all("\\" not in line for line in lines)
    assert len(python_blocks(README)) == 1


@pytest.mark.parametrize(
    ("module", "args"), commands(README, "/tmp/run"), ids=[line[:90] for line in shell_lines(README)]
)
def test_each_readme_command_composes(
    module: str, args: list[str], compose_cfg: Callable[..., DictConfig]
) -> None:
    """Every key and group option a README line names exists (the pipeline's own check, then
    Hydra's composition), before anything runs."""
    assert importlib.util.find_spec(module) is not None, module
    overrides = [a for a in args if not a.startswith("hydra.")] + ["debug=tiny"]
    check_overrides(_config_name(module), overrides)
    if module != "pipelines.query":  # query writes nothing, so it has no output_dir for compose_cfg to set
        compose_cfg(_config_name(module), overrides)


def test_the_version_is_pyprojects_and_has_a_changelog_entry() -> None:
    version = importlib.metadata.version("tte_recsys")
    assert tte_recsys.__version__ == version
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "## [Unreleased]" in changelog and re.search(
        rf"^## \[{re.escape(version)}\] - \d{{4}}-\d\d-\d\d$", changelog, re.M
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder the README's commands run in, with what they assume is there."""
    from bench.synthetic_shop import generate

    d = tmp_path_factory.mktemp("readme")
    reasoner, _ = build_toy_models(d / "toy")
    catalog, log = generate(items=300, users=200, interactions=6000)
    catalog.write_csv(d / "items.csv")
    log.write_csv(d / "log.csv")
    (d / "models").mkdir()
    (d / "models" / "smollm2-135m-instruct").symlink_to(reasoner)  # where make smollm2 writes
    r = run_module(
        "pipelines.train_i2i", ["debug=tiny", "hydra.run.dir=outputs/train_i2i/movielens/tiny"], cwd=d
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return d


@pytest.fixture(scope="module")
def outcomes(workdir: Path) -> list[tuple[str, subprocess.CompletedProcess[str]]]:
    """Every README command with ``debug=tiny``, chains in order, three chains at a time."""
    cmds = commands(README, str(workdir / "outputs/train_i2i/movielens/tiny"))
    results: dict[int, subprocess.CompletedProcess[str]] = {}

    def run_chain(chain: list[int]) -> None:
        for i in chain:
            module, args = cmds[i]
            if module in SERVERS:
                continue
            extra = (
                []
                if module == "pipelines.query" or any(_key(a) == "hydra.run.dir" for a in args)
                else [f"hydra.run.dir=out/{i}"]
            )
            argv = [*args, "debug=tiny", *extra]
            try:  # the trainable content tower's line takes minutes on a busy 2-core machine
                results[i] = run_module(module, argv, cwd=workdir, timeout=1800)
            except subprocess.TimeoutExpired as e:
                results[i] = subprocess.CompletedProcess(e.cmd, -9, "", f"timed out after {e.timeout} s")

    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(run_chain, _chains(cmds)))
    return [(line, results[i]) for i, line in enumerate(shell_lines(README)) if i in results]


@pytest.mark.slow
def test_each_readme_command_runs(outcomes: list[tuple[str, subprocess.CompletedProcess[str]]]) -> None:
    failed = []
    for line, r in outcomes:
        expected = next((msg for key, msg in EXPECTED.items() if key in line), None)
        ok = r.returncode == 0 if expected is None else r.returncode == 2 and re.search(expected, r.stderr)
        if not ok or "Traceback" in r.stderr:
            failed.append(f"{line}\n  exit {r.returncode}\n{r.stderr[-1500:]}")
    assert not failed, "\n\n".join(failed)


@pytest.mark.slow
def test_the_python_block_runs(
    workdir: Path, outcomes: list[tuple[str, subprocess.CompletedProcess[str]]]
) -> None:
    """After the commands (the bundle is export_faiss's), the README's Python block as written,
    ``<run>`` being the tiny run."""
    (workdir / "readme_example.py").write_text(python_blocks(README)[0].replace("<run>", "tiny"))
    r = run_module("readme_example", [], cwd=workdir, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "unknown item id 'no-such-id'" in r.stdout and "recall@50" in r.stdout
