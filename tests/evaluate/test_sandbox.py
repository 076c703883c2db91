"""The sandbox contains loops, fork bombs, memory hogs, writes outside its folder and network connections,
and still passes a correct program. Limits are small (1-3 s) to keep the tests quick."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from sftune.evaluate import sandbox

QUICK = sandbox.Limits(timeout=3, cpu_seconds=1, memory_mb=512, processes=16)
AVAILABLE = sandbox.available()

SOLUTION = '''
def add(a, b):
    return a + b
'''
TESTS = '''
def check(candidate):
    assert candidate(2, 3) == 5
    assert candidate(-1, 1) == 0
check(add)
'''


def processes_in(folder: str) -> list[int]:
    """Processes still running with `folder` (or its deleted remains) as their working directory."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd").startswith(folder):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_a_correct_solution_passes_and_a_wrong_one_fails():
    good = sandbox.run(SOLUTION + TESTS, QUICK)
    bad = sandbox.run(SOLUTION.replace("a + b", "a - b") + TESTS, QUICK)
    assert good.passed and good.status == "passed", good.stderr
    assert not bad.passed and bad.status == "failed" and "AssertionError" in bad.stderr


def test_the_program_runs_in_a_fresh_folder_that_is_removed_after():
    result = sandbox.run("import os\nopen('scratch.txt', 'w').write('x')\nprint(os.getcwd(), sorted(os.listdir()))\n"
                         "assert 'HF_TOKEN' not in os.environ and 'PYTHONPATH' not in os.environ", QUICK)
    assert result.passed, result.stderr
    assert result.stdout.split()[0] == os.path.realpath(result.folder)
    assert "'program.py', 'scratch.txt'" in result.stdout
    assert not Path(result.folder).exists()


def test_an_infinite_loop_is_stopped_at_the_cpu_limit():
    result = sandbox.run("while True:\n    pass\n", QUICK)
    assert result.status == "timeout" and not result.passed
    assert result.seconds < QUICK.timeout + 1


def test_a_sleeping_program_is_killed_at_the_wall_clock_limit_with_its_children():
    result = sandbox.run("import time\ntime.sleep(60)\n", sandbox.Limits(timeout=1))
    assert result.status == "timeout" and 1 <= result.seconds < 3
    assert processes_in(result.folder) == []


def test_a_fork_bomb_is_contained():
    result = sandbox.run("import os\nwhile True:\n    os.fork()\n", QUICK)
    assert not result.passed and result.seconds < QUICK.timeout + 1
    assert "starting a process is refused" in result.stderr
    assert processes_in(result.folder) == []


@pytest.mark.skipif(not (AVAILABLE["pids_cgroup"] or AVAILABLE["rlimit_nproc"]),
                    reason="root without a writable pids cgroup: only the audit hook limits processes here")
def test_a_fork_bomb_is_contained_by_the_os_limits_alone():
    bomb = "import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(30)\n"
    result = sandbox.run(bomb, sandbox.Limits(timeout=2, processes=16), audit_hook=False)
    assert result.status == "timeout" and result.seconds < 4
    assert processes_in(result.folder) == []


def test_a_memory_hog_gets_a_memory_error_not_the_machines_memory():
    result = sandbox.run("blocks = []\nwhile True:\n    blocks.append(bytearray(64 * 2**20))\n", QUICK)
    assert result.status == "failed" and "MemoryError" in result.stderr
    assert result.seconds < QUICK.timeout


def test_a_write_outside_the_temporary_folder_is_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    for code in (f"open({str(target)!r}, 'w').write('x')",
                 f"import os\nfd = os.open({str(target)!r}, os.O_CREAT | os.O_WRONLY)",
                 f"import os\nos.symlink({str(target)!r}, 'link')\nopen('link', 'w').write('x')",
                 f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')"):
        result = sandbox.run(code, QUICK)
        assert result.status == "failed" and "outside the temporary folder is refused" in result.stderr, code
        assert not target.exists()
    victim = tmp_path / "keep.txt"
    victim.write_text("mine")
    result = sandbox.run(f"import os\nos.remove({str(victim)!r})", QUICK)
    assert result.status == "failed" and victim.read_text() == "mine"


@pytest.fixture
def listener():
    """A real listening socket on 127.0.0.1 that the sandboxed program tries to reach."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.5)
    yield server
    server.close()


def reached(server: socket.socket) -> bool:
    try:
        connection, _ = server.accept()
    except TimeoutError:
        return False
    connection.close()
    return True


CONNECT = "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'leak')\n"


def test_a_network_connection_does_not_reach_a_listening_socket(listener):
    port = listener.getsockname()[1]
    # the listener is reachable from outside the sandbox: the check below can fail
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        assert reached(listener)
    result = sandbox.run(CONNECT.format(port=port), QUICK)
    assert result.status == "failed" and "network access is refused" in result.stderr
    assert not reached(listener)


@pytest.mark.skipif(not AVAILABLE["namespaces"], reason="unshare --net is not permitted on this machine")
def test_the_network_namespace_alone_keeps_the_program_off_the_network(listener):
    result = sandbox.run(CONNECT.format(port=listener.getsockname()[1]), QUICK, audit_hook=False, bubblewrap=False)
    assert result.containment["network"].startswith("unshare")
    assert result.status == "failed" and ("ConnectionRefused" in result.stderr or "unreachable" in result.stderr)
    assert not reached(listener)


def test_run_many_keeps_the_order():
    programs = [SOLUTION + TESTS, "raise SystemExit(3)", SOLUTION + TESTS]
    assert [r.status for r in sandbox.run_many(programs, QUICK, workers=2)] == ["passed", "failed", "passed"]


# Escapes found by running hostile programs through the sandbox as root: each is contained by bubblewrap. With
# `bubblewrap=False` (the sandbox before it) every one of these programs succeeded.
needs_bwrap = pytest.mark.skipif(not AVAILABLE["bubblewrap"], reason="bubblewrap (`bwrap`) is not installed or may "
                                 "not create user namespaces here (apt-get install bubblewrap)")
SECRET = "sftune-test-secret-4e1f"


@needs_bwrap
def test_files_outside_its_folder_cannot_be_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    code = (f"for path in ({str(secret)!r}, '/etc/shadow', '/root/.bash_history'):\n"
            "    try:\n        print(open(path).read())\n    except OSError as err:\n        print('refused', err)\n")
    result = sandbox.run(code, QUICK)
    assert result.passed and result.stdout.count("refused") == 3, result.stdout
    assert SECRET not in result.stdout and "root:" not in result.stdout
    assert "bubblewrap" in result.containment["isolation"]


@needs_bwrap
def test_no_other_process_environment_is_visible():
    holder = subprocess.Popen(["sleep", "30"], env={"SFTUNE_TEST_API_KEY": SECRET})  # a process with a key
    code = ("import os\nfor pid in [p for p in os.listdir('/proc') if p.isdigit()] + ['1', "
            f"'{os.getpid()}', '{holder.pid}']:\n"
            "    try:\n        print(pid, open(f'/proc/{pid}/environ', 'rb').read())\n"
            "    except OSError as err:\n        print(pid, 'refused', err)\n")
    try:
        result = sandbox.run(code, QUICK)
    finally:
        holder.kill()
        holder.wait()
    assert result.passed, result.stderr
    assert SECRET not in result.stdout and "SFTUNE_TEST_API_KEY" not in result.stdout


ESCAPES = {  # writes that get around the audit hook: a directory descriptor, a hard link, fchmod, a rename
    "dir_fd": "import os\nfd = os.open({folder!r}, os.O_RDONLY)\n"
              "os.write(os.open('escaped.txt', os.O_CREAT | os.O_WRONLY, dir_fd=fd), b'x')\n",
    "hard link": "import os\nos.link({victim!r}, 'inside')\nopen('inside', 'w').write('overwritten')\n",
    "fchmod": "import os\nos.fchmod(os.open({victim!r}, os.O_RDONLY), 0o777)\n",
    "rename": "import os\nfd = os.open({folder!r}, os.O_RDONLY)\nopen('mine', 'w').write('x')\n"
              "os.rename('mine', 'escaped.txt', dst_dir_fd=fd)\n",
}


@needs_bwrap
@pytest.mark.parametrize("escape", ESCAPES)
def test_nothing_outside_its_folder_is_written(escape, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    victim.chmod(0o600)
    result = sandbox.run(ESCAPES[escape].format(folder=str(tmp_path), victim=str(victim)), QUICK)
    assert not result.passed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim.txt"]
    assert victim.read_text() == "mine" and victim.stat().st_mode & 0o777 == 0o600


@needs_bwrap
def test_without_the_audit_hook_the_network_is_still_unreachable(listener):
    result = sandbox.run(CONNECT.format(port=listener.getsockname()[1]), QUICK, audit_hook=False,
                         network_namespace=False)
    assert result.status == "failed" and "ConnectionRefused" in result.stderr
    assert not reached(listener)


@needs_bwrap
def test_without_the_audit_hook_the_parent_cannot_be_killed():
    parent = os.getpid()
    code = (f"import os, signal\ntry:\n    os.kill({parent}, signal.SIGTERM)\n    print('sent')\n"
            "except OSError as err:\n    print('refused', err)\n")
    received = []
    previous = signal.signal(signal.SIGTERM, lambda *_: received.append(True))
    try:
        result = sandbox.run(code, QUICK, audit_hook=False, network_namespace=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == [] and result.stdout.startswith("refused"), result.stdout


@needs_bwrap
def test_process_spawns_without_the_audit_hook_are_bounded():
    code = ("import _posixsubprocess, os, subprocess, sys\nstarted = 0\n"
            "for _ in range(200):\n    try:\n        subprocess.Popen(['/bin/sleep', '30'])\n        started += 1\n"
            "    except OSError:\n        break\nprint(started)\n")
    result = sandbox.run(code, sandbox.Limits(timeout=3, processes=16), audit_hook=False)
    assert int(result.stdout.split()[0]) < 16, result.stderr
