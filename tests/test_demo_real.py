"""The real-data run as its page documents it (docs/evaluation.md, "MovieLens + the demo world → Amazon
Scientific"): the ``recbase ingest`` lines, then ``recbase demo --config demo_real.json``. The commands are read from
the page, so a change of the page changes what runs here; the README's ingest lines must be the same ones."""
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from doc_commands import REPO, code_blocks, commands, new_shell_env
from recbase.cli import build_parser
from recbase.commands.ingest import target_domain
from recbase.data.presets import preset_names
from recbase.data.synthetic import DOMAINS as WORLD_DOMAINS
from recbase.pipeline import load_pipeline_config

CONFIG = "demo_real.json"
PAGE = REPO / "docs" / "evaluation.md"
SHARED_DATA = "../shared/data/"


def demo_real_block() -> str:
    blocks = [b for b in code_blocks(PAGE.read_text(encoding="utf-8")) if f"--config {CONFIG}" in b]
    assert len(blocks) == 1, f"{PAGE.name} should show the {CONFIG} run in one block, found {len(blocks)}"
    return blocks[0]


def ingest_lines(block: str) -> list[list[str]]:
    return [c for c in commands(block) if c[:2] == ["recbase", "ingest"]]


def run_line(block: str) -> list[str]:
    """The block's ``recbase demo|run --config demo_real.json`` line; the ingest lines must come before it."""
    lines = commands(block)
    runs = [i for i, c in enumerate(lines) if c[:2] in (["recbase", "demo"], ["recbase", "run"])
            and "--config" in c and c[c.index("--config") + 1] == CONFIG]
    assert len(runs) == 1
    assert all(i < runs[0] for i, c in enumerate(lines) if c[:2] == ["recbase", "ingest"])
    return lines[runs[0]]


def test_documented_ingest_lines_write_the_domains_demo_real_json_names():
    """Each ingest line parses (format or preset name), reads a dataset of ../shared/data (each has a preset named
    after its folder) into the config's data folder, and the domains they write are exactly the config's domains
    that are not demo-world domains; a domain the pipeline would not find (``movielens-latest-small`` written,
    ``movielens`` expected) fails here, without running anything."""
    cfg = load_pipeline_config(CONFIG, [])
    parser = build_parser()
    block = demo_real_block()
    documented = ingest_lines(block)
    readme = [c for b in code_blocks((REPO / "README.md").read_text(encoding="utf-8")) for c in ingest_lines(b)
              if c[c.index("--out") + 1] == f"{cfg.out}/data"]
    assert readme == documented, "the README's ingest lines into the real-data run differ from docs/evaluation.md's"

    config_domains = cfg.pretrain_domains + cfg.heldout_domains
    written = []
    for c in documented:
        args = parser.parse_args(c[1:])
        assert args.out == f"{cfg.out}/data", shlex.join(c)
        assert args.path.startswith(SHARED_DATA) and Path(args.path).name in preset_names(), shlex.join(c)
        written.append(target_domain(args))
    assert len(set(written)) == len(written)
    assert sorted(written) == sorted(d for d in config_domains if d not in WORLD_DOMAINS), written
    assert set(cfg.heldout_domains) <= set(written)   # the held-out domain is real data, not the demo world

    run = parser.parse_args(run_line(block)[1:])
    assert run.out is None and not run.overrides   # the config's own out, where the ingest lines write

    # the README's stage-by-stage tokenizer line trains on domains those ingest lines write
    for b in code_blocks((REPO / "README.md").read_text(encoding="utf-8")):
        for c in commands(b):
            if c[:3] == ["recbase", "tokenizer", "train"] and c[c.index("--data") + 1] == f"{cfg.out}/data":
                assert set(c[c.index("--domains") + 1].split(",")) <= set(written), shlex.join(c)


@pytest.mark.slow
def test_demo_real_runs_from_its_documented_commands(tmp_path):
    """The page's ingest lines and its ``recbase demo --config demo_real.json`` line in order, in a new shell with
    only this environment's ``bin`` on PATH (as after ``source .venv/bin/activate``), from a folder beside
    ``../shared`` as the repository's is. One thing is appended: ``train_steps=100 finetune_steps=20`` to the demo
    line (the config's 400 + 100 steps would add minutes, and quality is not what this checks); the ingest lines
    run exactly as written. Checks the pipeline's closing line and the evaluation table for the held-out domain,
    on the terminal and in report.md."""
    block = demo_real_block()
    shared = REPO.parent / "shared"
    paths = [c[3] for c in ingest_lines(block)]
    missing = [p for p in paths if not (shared / p[len("../shared/"):]).is_dir()]
    if missing:
        pytest.skip(f"datasets not present: {', '.join(missing)}")
    work = tmp_path / "recbase"
    work.mkdir()
    (tmp_path / "shared").symlink_to(shared)
    script = ["set -e"] + [shlex.join(c) for c in ingest_lines(block)]
    script.append(shlex.join(run_line(block) + ["train_steps=100", "finetune_steps=20"]))
    env = new_shell_env(tmp_path, Path(sys.executable).parent) | {"PYTHONPATH": str(REPO)}   # this checkout
    done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=work, env=env, capture_output=True, text=True,
                          timeout=3600)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    out = done.stdout
    cfg = load_pipeline_config(CONFIG, [])
    for domain in cfg.heldout_domains:
        assert f"wrote {cfg.out}/data/{domain}/" in out
    assert re.search(rf"^pipeline finished in \d+ s; everything is under {cfg.out}/", out, flags=re.M), out[-3000:]

    # the terminal's table: per held-out domain, the zero-shot and the fine-tuned model beside the text bar; and
    # report.md's ranking table, whose row for the domain starts with the same zero-shot AUC
    report = (work / cfg.out / "eval" / "report.md").read_text(encoding="utf-8")
    models = ["zero-shot", f"fine-tuned on {cfg.heldout_domains[0]}"]
    for domain in cfg.heldout_domains:
        rows = {m.group(1): m.groups()[1:] for m in re.finditer(
            rf"^{domain}\s+({'|'.join(models)})\s+(\d\.\d{{4}})\s+(\d\.\d{{4}})\s+([+-]\d\.\d{{4}})$", out, flags=re.M)}
        assert sorted(rows) == sorted(models), out[-3000:]
        for auc, bar, gap in rows.values():
            assert 0 < float(auc) < 1 and abs(float(auc) - float(bar) - float(gap)) < 2e-4
            assert float(bar) > 0.6   # centred text similarity on Scientific: 0.73 in every documented run
        assert re.search(rf"^\| {domain} \| {rows['zero-shot'][0]} \|", report, flags=re.M), report[:3000]
