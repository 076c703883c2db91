"""output.push_to_hub: the run folder uploaded through huggingface_hub, here to a fake Hub endpoint on
127.0.0.1 that records what it is sent (nothing leaves the machine); the token is checked before training."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sftune import publish
from sftune.config import ConfigError, load


class FakeHub(BaseHTTPRequestHandler):
    """The calls HfApi.create_repo and upload_folder make: create, validate the card's YAML, preupload, commit."""

    requests: list[tuple[str, str, dict, bytes]] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.requests.append(("POST", self.path, dict(self.headers), body))
        endpoint = f"http://{self.server.server_address[0]}:{self.server.server_address[1]}"
        if self.path == "/api/repos/create":
            repo = json.loads(body)
            answer = {"url": f"{endpoint}/{repo['organization']}/{repo['name']}"}
        elif self.path == "/api/validate-yaml":
            answer = {"errors": [], "warnings": []}
        elif "/preupload/" in self.path:
            answer = {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                for f in json.loads(body)["files"]]}
        elif "/commit/" in self.path:
            answer = {"commitUrl": f"{endpoint}/me/run/commit/0123abc", "commitOid": "0123abc"}
        else:
            self.send_error(404)
            return
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def fake_hub(monkeypatch):
    from huggingface_hub import constants

    FakeHub.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(constants, "ENDPOINT", url)  # read once at import: set where HfApi reads it
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_the_test")
    yield FakeHub.requests
    server.shutdown()
    server.server_close()


def committed_files(requests) -> dict[str, bytes]:
    """path -> content of every file in the commits sent (ndjson lines of key / value)."""
    files = {}
    for _, path, _, body in requests:
        if "/commit/" in path:
            for line in body.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
    return files


def test_training_pushes_the_run_folder_with_its_model_card(tmp_path, tiny_checkpoint, fake_hub):
    from sftune import train
    from sftune.demo import write_dataset

    train_path, _ = write_dataset(tmp_path / "data", n_train=24, n_eval=4)
    result = train({"model": {"name": str(tiny_checkpoint)}, "data": {"train": str(train_path), "max_len": 128},
                    "method": {"name": "lora", "r": 4}, "train": {"max_steps": 2, "batch_size": 2, "save_steps": 1}, "eval": {"steps": 1},
                    "output": {"dir": str(tmp_path / "run"), "push_to_hub": "me/run"}})

    create = json.loads(next(body for _, path, _, body in fake_hub if path == "/api/repos/create"))
    assert (create["organization"], create["name"], create["visibility"], create["type"]) == ("me", "run", "private",
                                                                                               "model")
    assert {headers.get("authorization") for _, _, headers, _ in fake_hub} == {"Bearer hf_fake_token_for_the_test"}
    files = committed_files(fake_hub)
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "config.yaml", "summary.json",
            "README.md"} <= set(files)
    assert not [name for name in files if name.startswith("checkpoints/")]  # optimizer states stay local
    assert (result.run_dir / "checkpoints").is_dir()
    card = files["README.md"].decode()
    assert card == (result.run_dir / "README.md").read_text(encoding="utf-8")
    validated = next(body for _, path, _, body in fake_hub if path == "/api/validate-yaml")
    assert json.loads(validated)["content"] == card  # the Hub checks the card's front matter first
    assert "Model Card for Model ID" not in card and "library_name: peft" in card and "lora" in card


def test_no_token_is_refused_before_training(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no stored token either
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "stored_tokens"))
    with pytest.raises(ConfigError, match="output.push_to_hub=me/run: no Hugging Face token; set HF_TOKEN"):
        publish.check(load(None, ["output.push_to_hub=me/run"]))


def test_a_malformed_repository_id_is_refused(fake_hub):
    with pytest.raises(ConfigError, match="output.push_to_hub=not a repo: not a repository id"):
        publish.check(load(None, ["output.push_to_hub=not a repo"]))


def test_a_failed_upload_says_how_to_upload_again(tmp_path, fake_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", constants.ENDPOINT + "/gone")  # every call answers 404
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("{}\n")
    with pytest.raises(ConfigError, match=r"the upload failed .*hf upload me/run .* --exclude 'checkpoints/\*'"):
        publish.push(tmp_path / "run", "me/run")
