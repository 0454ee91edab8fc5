"""Every hand-off file format is parsed only in the module that owns it (docs/formats.md).

A second reader of a format drifts from the first: it skips a check (a hash, a column, a size) that the owner
makes, and the two disagree on what a valid file is. So every call that parses a hand-off format (``pq.read_table``,
``np.load``, ``torch.load``, a safetensors load, ``tarfile.open``, ...) and every read of a hand-off JSON file
(``manifest.json``, ``recbase.json``, ...) may appear only in the modules listed for it below, which mirror the
"read by" column of docs/formats.md. A module that needs such a file calls its owner.
"""
import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "recbase"

TABLES, CODES, EVAL_SETS = "recbase/data/tables.py", "recbase/data/codes.py", "recbase/data/evalsets.py"
READERS = "recbase/data/readers/"   # the source datasets, one reader module per format
PARQUET = (TABLES, CODES, EVAL_SETS, READERS)
SAFETENSORS = ("recbase/tokenizer/artifact.py", "recbase/train/export.py")

# parsing call (fully qualified) -> the modules (a path, or a folder ending in "/") allowed to make it
CALL_OWNERS: dict[str, tuple[str, ...]] = {
    **{f"pyarrow.parquet.{fn}": PARQUET
       for fn in ("read_table", "read_schema", "read_metadata", "read_pandas", "ParquetFile", "ParquetDataset")},
    "pyarrow.dataset.dataset": (),
    "pandas.read_parquet": (),
    "numpy.load": ("recbase/tokenizer/embed.py",),                   # embeddings and the catalog cache's arrays
    "torch.load": ("recbase/train/checkpoint.py",),                  # checkpoints, weights-only
    "torch.serialization.load": ("recbase/train/checkpoint.py",),
    "safetensors.torch.load_file": SAFETENSORS,                      # tokenizer artifact, Hugging Face export
    "safetensors.torch.load": SAFETENSORS,
    "safetensors.safe_open": SAFETENSORS,
    "transformers.AutoModelForCausalLM.from_pretrained": ("recbase/train/export.py",),
    "tarfile.open": ("recbase/data/shard_format.py", "recbase/data/fetch.py"),   # shards; downloaded archives
    "webdataset.tariterators.tarfile_samples": ("recbase/data/shard_format.py",),
    "webdataset.WebDataset": ("recbase/data/shard_format.py",),
    "pickle.load": (),                                               # no data file is ever unpickled
    "pickle.loads": (),
    "pandas.read_pickle": (),
}

# hand-off file of a fixed name -> the modules allowed to spell its name and to parse it as JSON
FILE_OWNERS: dict[str, tuple[str, ...]] = {
    "items.parquet": (TABLES,),
    "interactions.parquet": (TABLES,),
    "impressions.parquet": (TABLES,),
    "manifest.json": ("recbase/data/shard_format.py",),
    "checkpoint_manifest.json": ("recbase/train/checkpoint.py",),
    "recbase.json": ("recbase/train/checkpoint.py", "recbase/train/export.py"),
    "metrics.json": ("recbase/eval/report.py", "recbase/indomain.py"),   # indomain names its own report alike
}
JSON_LOADS = {"json.load", "json.loads"}


def owned_by(path: str, owners: tuple[str, ...]) -> bool:
    return any(path == o or (o.endswith("/") and path.startswith(o)) for o in owners)


def module_of(path: str) -> str:
    parts = Path(path).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_aliases(tree: ast.AST, path: str) -> dict[str, str]:
    """Local name -> what it stands for (``pq`` -> ``pyarrow.parquet``), over every import of the module."""
    package = module_of(path) if path.endswith("__init__.py") else module_of(path).rpartition(".")[0]
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for a in node.names:
                aliases[a.asname or a.name] = f"{base}.{a.name}"
    return aliases


def qualified(node: ast.AST, aliases: dict[str, str]) -> str | None:
    if isinstance(node, ast.Name):
        return aliases.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        base = qualified(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    return None


def constant_value(name: str) -> object:
    """The value of an imported ``recbase`` module attribute (``recbase.data.shard_format.MANIFEST``), else None."""
    module, _, attr = name.rpartition(".")
    if not module.startswith(PACKAGE + ".") and module != PACKAGE:
        return None
    try:
        return getattr(importlib.import_module(module), attr, None)
    except ImportError:
        return None


def file_named(node: ast.AST) -> str | None:
    """The hand-off file a string literal is the name or the path of."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        path = node.value if not any(c.isspace() for c in node.value) else ""   # a path, not a sentence
        return next((f for f in FILE_OWNERS if path == f or path.endswith("/" + f)), None)
    return None


def handoff_file(node: ast.AST, aliases: dict[str, str], tainted: dict[str, str]) -> str | None:
    """The hand-off file an expression names: its name as a literal, an imported constant holding it, or a local
    variable assigned from either."""
    for sub in ast.walk(node):
        if file_named(sub):
            return file_named(sub)
        if isinstance(sub, ast.Name) and sub.id in tainted:
            return tainted[sub.id]
        if isinstance(sub, (ast.Name, ast.Attribute)):
            name = qualified(sub, aliases)
            value = constant_value(name) if name and name != getattr(sub, "id", None) else None
            if isinstance(value, str) and value in FILE_OWNERS:
                return value
    return None


def scope_nodes(scope: ast.AST):
    """The nodes of a module or function body, without those of the functions defined inside it."""
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


def violations(source: str, path: str) -> list[str]:
    """``path:line: what`` for every format parsed or hand-off file named outside its owner modules."""
    tree = ast.parse(source, path)
    aliases = import_aliases(tree, path)
    in_messages = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = qualified(node.func, aliases)
            if name in CALL_OWNERS and not owned_by(path, CALL_OWNERS[name]):
                owners = ", ".join(CALL_OWNERS[name]) or "no module"
                found.append(f"{path}:{node.lineno}: calls {name} (allowed in {owners})")
        elif id(node) not in in_messages and (file := file_named(node)) and not owned_by(path, FILE_OWNERS[file]):
            found.append(f"{path}:{node.lineno}: names {file} (owned by {', '.join(FILE_OWNERS[file])}; use its "
                         f"constant and reader)")
    for scope in [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        tainted: dict[str, str] = {}
        for _ in range(2):   # a variable assigned from a variable assigned from a file name
            for node in scope_nodes(scope):
                if isinstance(node, ast.Assign) and (file := handoff_file(node.value, aliases, tainted)):
                    tainted.update({t.id: file for t in node.targets if isinstance(t, ast.Name)})
                elif isinstance(node, (ast.For, ast.comprehension)) and isinstance(node.target, ast.Name) and \
                        (file := handoff_file(node.iter, aliases, tainted)):
                    tainted[node.target.id] = file
        for node in scope_nodes(scope):
            if isinstance(node, ast.Call) and qualified(node.func, aliases) in JSON_LOADS:
                file = next((f for a in node.args if (f := handoff_file(a, aliases, tainted))), None)
                if file and not owned_by(path, FILE_OWNERS[file]):
                    found.append(f"{path}:{node.lineno}: parses {file} (owned by {', '.join(FILE_OWNERS[file])})")
    return sorted(set(found))


def test_every_format_is_parsed_only_by_its_owner():
    """In the library and in the entry points and benchmarks of launch/ and tokenizer/, which stay thin."""
    files = sorted(f for folder in (PACKAGE, "launch", "tokenizer") for f in (ROOT / folder).rglob("*.py"))
    assert len(files) > 50 and any(f.parent.name == "bench" for f in files), "the walk missed files"
    found = [v for f in files for v in violations(f.read_text(encoding="utf-8"), f.relative_to(ROOT).as_posix())]
    if found:
        pytest.fail("file formats parsed outside their owner module (docs/formats.md):\n" + "\n".join(found))


def test_every_owner_exists_and_is_named_in_docs_formats():
    docs = (ROOT / "docs" / "formats.md").read_text(encoding="utf-8")
    owners = {o for table in (CALL_OWNERS, FILE_OWNERS) for owned in table.values() for o in owned}
    for owner in sorted(owners):
        assert (ROOT / owner).exists(), owner
        assert owner in docs, f"{owner} owns a format but docs/formats.md does not name it"


@pytest.mark.parametrize("source, what", [
    ("import pyarrow.parquet as pq\ndef f(p):\n    return pq.read_table(p)\n", "calls pyarrow.parquet.read_table"),
    ("import pyarrow.parquet\nn = pyarrow.parquet.ParquetFile('x').metadata\n", "calls pyarrow.parquet.ParquetFile"),
    ("from safetensors.torch import load_file as lf\nw = lf('a.safetensors')\n", "calls safetensors.torch.load_file"),
    ("import numpy\nx = numpy.load('a.npy')\n", "calls numpy.load"),
    ("import torch\nx = torch.load('a.pt', weights_only=True)\n", "calls torch.load"),
    ("import tarfile\nt = tarfile.open('a.tar')\n", "calls tarfile.open"),
    ("import json\nm = json.loads(open('shards/manifest.json').read())\n", "parses manifest.json"),
    ("import json\nfrom recbase.data.shard_format import MANIFEST\n"
     "def f(root):\n    p = root / MANIFEST\n    q = p\n    return json.loads(q.read_text())\n", "parses manifest.json"),
    ("import json\nfrom recbase.train import export\ndef f(d):\n    return json.load(open(d / export.META_FILE))\n",
     "parses recbase.json"),
    ("def f(d):\n    return d / 'checkpoint_manifest.json'\n", "names checkpoint_manifest.json"),
    ("import json\nfrom recbase.data import shard_format as sf\ndef f(dirs):\n    paths = {d / sf.MANIFEST for d in dirs}\n"
     "    for p in sorted(paths):\n        yield json.loads(p.read_text())\n", "parses manifest.json"),
])
def test_the_checker_catches_a_violation(source, what):
    found = violations(source, "recbase/eval/added.py")
    assert any(what in v for v in found), found
    assert found[0].startswith("recbase/eval/added.py:")


def test_the_checker_allows_the_owner_and_plain_uses():
    assert violations("import pyarrow.parquet as pq\nt = pq.read_table('x')\n", TABLES) == []
    assert violations("import json\nfrom recbase.io import sha256_file\nx = json.loads('{}')\n",
                      "recbase/eval/added.py") == []
    # naming a file's constant to test that it exists, or in a message, is no parse
    source = ("from recbase.data.shard_format import MANIFEST\n"
              "def f(root):\n    if (root / MANIFEST).exists():\n        print(f'see {root}/manifest.json')\n")
    assert violations(source, "recbase/eval/added.py") == []
    assert violations("import tarfile\nwith tarfile.open('a.tar.gz') as t:\n    pass\n", READERS + "x.py") != []
