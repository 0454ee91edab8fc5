"""recbase data fetch against a local HTTP server: verify, unpack, ingest; refuse a wrong checksum; resume."""
import functools
import hashlib
import http.server
import io
import json
import threading
import zipfile

import pyarrow.parquet as pq
import pytest

from recbase.cli import main
from recbase.data import fetch as fetch_module
from recbase.data.fetch import LOCK_FILE, ChecksumError, Dataset, RemoteFile, fetch

MOVIES = "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n2,Heat (1995),Action\n"
RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,2,4.0,964981247\n2,2,3.0,964981000\n"


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files, honouring ``Range: bytes=N-`` (which SimpleHTTPRequestHandler ignores); records requests."""

    requests: list = []

    def do_GET(self):
        self.requests.append((self.path, self.headers.get("Range")))
        rng = self.headers.get("Range")
        if not rng:
            return super().do_GET()
        data = (self.directory_path / self.path.lstrip("/")).read_bytes()
        start = int(rng.removeprefix("bytes=").rstrip("-"))
        self.send_response(206)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture()
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    RangeHandler.requests = []
    handler = functools.partial(RangeHandler, directory=str(root))
    RangeHandler.directory_path = root
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _zip(path, files: dict[str, str]) -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    path.write_bytes(buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def _register(monkeypatch, name, url, sha256):
    monkeypatch.setitem(fetch_module.REGISTRY, name,
                        Dataset((RemoteFile(url, sha256),), "movielens", "ml-tiny", homepage="local"))


def test_fetch_verifies_unpacks_and_ingests(tmp_path, server, monkeypatch, capsys):
    root, base = server
    sha = _zip(root / "ml-tiny.zip", {"ml-tiny/movies.csv": MOVIES, "ml-tiny/ratings.csv": RATINGS})
    _register(monkeypatch, "tiny", base + "ml-tiny.zip", sha)
    dest, out = tmp_path / "dl", tmp_path / "tables"
    assert main(["data", "fetch", "tiny", "--dest", str(dest), "--out", str(out),
                 "--min-user-interactions", "0"]) == 0
    assert "[tiny] items=2 users=2 interactions=3" in capsys.readouterr().out
    items = pq.read_table(out / "tiny" / "items.parquet").to_pydict()
    assert items["text"][0] == 'Describe a movie:\n{"title": "Toy Story (1995)", "genres": "Adventure | Animation"}'
    assert (dest / "tiny" / "ml-tiny" / "ratings.csv").read_text() == RATINGS
    assert not list(dest.rglob("*.part")) and not (dest / LOCK_FILE).exists()
    # A rerun reuses the verified archive instead of downloading again.
    n = len(RangeHandler.requests)
    fetch("tiny", dest)
    assert len(RangeHandler.requests) == n


def test_wrong_checksum_is_refused_and_nothing_left(tmp_path, server, monkeypatch, capsys):
    root, base = server
    _zip(root / "ml-tiny.zip", {"ml-tiny/movies.csv": MOVIES, "ml-tiny/ratings.csv": RATINGS})
    _register(monkeypatch, "tiny", base + "ml-tiny.zip", "0" * 64)
    dest = tmp_path / "dl"
    dest.mkdir()
    assert main(["data", "fetch", "tiny", "--dest", str(dest), "--out", str(tmp_path / "tables")]) == 2
    assert "does not match the recorded " + "0" * 64 in capsys.readouterr().err
    assert list(dest.rglob("*")) == []
    assert not (tmp_path / "tables").exists()


def test_unpublished_hash_is_pinned_on_first_download_then_enforced(tmp_path, server, monkeypatch):
    root, base = server
    sha = _zip(root / "ml-tiny.zip", {"ml-tiny/movies.csv": MOVIES, "ml-tiny/ratings.csv": RATINGS})
    _register(monkeypatch, "tiny", base + "ml-tiny.zip", None)
    dest = tmp_path / "dl"
    fetch("tiny", dest)
    assert json.loads((dest / LOCK_FILE).read_text()) == {base + "ml-tiny.zip": sha}
    # The server now serves different bytes under the same URL: a fresh download must be refused.
    _zip(root / "ml-tiny.zip", {"ml-tiny/movies.csv": MOVIES, "ml-tiny/ratings.csv": RATINGS + "3,1,1.0,1\n"})
    (dest / "tiny" / "ml-tiny.zip").unlink()
    with pytest.raises(ChecksumError, match=sha):
        fetch("tiny", dest)
    assert not list(dest.rglob("*.part"))


def test_partial_download_is_resumed(tmp_path, server, monkeypatch):
    root, base = server
    sha = _zip(root / "ml-tiny.zip", {"ml-tiny/movies.csv": MOVIES, "ml-tiny/ratings.csv": RATINGS * 50})
    data = (root / "ml-tiny.zip").read_bytes()
    _register(monkeypatch, "tiny", base + "ml-tiny.zip", sha)
    folder = tmp_path / "dl" / "tiny"
    folder.mkdir(parents=True)
    (folder / "ml-tiny.zip.part").write_bytes(data[:100])
    fetch("tiny", tmp_path / "dl")
    assert RangeHandler.requests == [("/ml-tiny.zip", "bytes=100-")]
    assert (folder / "ml-tiny.zip").read_bytes() == data


def test_unknown_name_lists_known(tmp_path, capsys):
    assert main(["data", "fetch", "nope", "--dest", str(tmp_path)]) == 2
    assert "ml-latest-small" in capsys.readouterr().err
    assert main(["data", "list"]) == 0
    assert "ml-1m" in capsys.readouterr().out
