"""`sftune webui`: binds 127.0.0.1 by default and answers there; a malformed --auth is one error line."""

from __future__ import annotations

import subprocess
import sys
import threading
import urllib.request

from typer.testing import CliRunner

from sftune.cli import app


def test_a_malformed_auth_is_a_user_error():
    result = CliRunner().invoke(app, ["webui", "--auth", "nopassword"])
    assert result.exit_code == 2
    assert "error:" in result.output and "USER:PASS" in result.output


def test_the_command_serves_the_page_on_loopback(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "sftune", "webui", "--runs", str(tmp_path / "runs")],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        from tests.webui.conftest import wait_for

        line = wait_for(lambda: next((l for l in lines if "sftune web UI:" in l), None), timeout=180,
                        what="the command to print its address")
        url = line.split("sftune web UI:", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=60) as response:
            assert response.status == 200 and b"<html" in response.read(2000)
        assert (tmp_path / "runs").is_dir()
    finally:
        process.terminate()
        process.wait(timeout=60)
