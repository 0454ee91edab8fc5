"""recbase serve: a real uvicorn server on a free localhost port, called with a real HTTP client (urllib)."""
import json
import logging
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from eval_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from recbase.recommend import Recommender
from recbase.serve import create_app, serving_in_thread


def call(url: str, body=None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def loaded(recommend_world):
    rec = Recommender.from_pretrained(recommend_world["model"], recommend_world["tokenizer"],
                                      cache_dir=recommend_world["root"] / "cache")
    return rec, rec.load_catalog(recommend_world["catalog"], progress=False)


@pytest.fixture(scope="module")
def url(loaded):
    with serving_in_thread(create_app(*loaded)) as base:
        yield base


def test_health(url, recommend_world):
    status, body = call(f"{url}/health")
    assert status == 200
    assert body["status"] == "ok" and body["catalog"] == "news" and body["items"] == 60


def test_recommend_and_score_answer_what_the_library_answers(url, loaded, recommend_world, caplog):
    rec, catalog = loaded
    history = recommend_world["cycle"][:3]
    with caplog.at_level(logging.INFO, logger="recbase.serve"):
        status, body = call(f"{url}/recommend", {"history": history, "k": 5})
    assert status == 200, body
    expected = rec.recommend(history, 5, catalog=catalog)
    assert [r["item_id"] for r in body["items"]] == [r.item_id for r in expected]
    assert body["items"][0]["item_id"] == recommend_world["cycle"][3]
    assert body["items"][0]["text"] == expected[0].text and body["took_ms"] > 0
    assert "POST /recommend 200" in caplog.text and " ms" in caplog.text

    candidates = recommend_world["ids"][:10] + [recommend_world["cycle"][3]]
    status, body = call(f"{url}/score", {"history": history, "candidates": candidates})
    assert status == 200, body
    assert body["items"][0]["item_id"] == recommend_world["cycle"][3]
    assert [r["item_id"] for r in body["items"]] == [r.item_id for r in rec.score(history, candidates, catalog=catalog)]


@pytest.mark.parametrize("path, body, field", [
    ("recommend", {"history": ["ne00000"], "k": 0}, "k: Input should be greater than or equal to 1"),
    ("recommend", {"history": "ne00000"}, "history: Input should be a valid list"),
    ("recommend", {"k": 3}, "history: Field required"),
    ("recommend", {"history": [], "colour": "red"}, "colour: Extra inputs are not permitted"),
    ("score", {"history": [], "candidates": []}, "candidates: List should have at least 1 item"),
])
def test_bad_requests_get_a_422_naming_the_field(url, path, body, field):
    status, answer = call(f"{url}/{path}", body)
    assert status == 422
    assert field in answer["error"], answer


def test_unknown_items_and_broken_json_are_4xx(url):
    status, answer = call(f"{url}/recommend", {"history": ["ne00000", "nope"]})
    assert status == 422 and answer["field"] == "history" and answer["unknown"] == ["nope"]
    status, answer = call(f"{url}/score", {"history": [], "candidates": ["ne00000", "x"]})
    assert status == 422 and answer["field"] == "candidates" and answer["unknown"] == ["x"]
    status, answer = call(f"{url}/recommend", raw=b'{"history": [')
    assert status == 422 and "JSON" in answer["error"]
    status, _ = call(f"{url}/nothing-here")
    assert status == 404


def test_recbase_serve_command_serves_until_stopped(recommend_world):
    w = recommend_world
    cmd = [sys.executable, "-m", "recbase", "serve", "--model", str(w["model"]), "--tokenizer", str(w["tokenizer"]),
           "--catalog", str(w["catalog"]), "--cache-dir", str(w["root"] / "cache"), "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = threading.Timer(300, proc.kill)   # bounds the wait for the address line below
    deadline.start()
    try:
        line = ""
        for line in proc.stdout:
            if line.startswith("serving on "):
                break
        assert line.startswith("serving on http://127.0.0.1:"), line + proc.stderr.read()
        base = line.split()[2]
        status, body = call(f"{base}/recommend", {"history": w["cycle"][:1], "k": 2})
        assert status == 200 and body["items"][0]["item_id"] == w["cycle"][1]
    finally:
        deadline.cancel()
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "POST /recommend 200" in err
