"""Run an untrusted Python program (generated code and its tests) apart from sftune and the machine.

    result = sandbox.run(prompt + completion + test + f"check({entry_point})", Limits(timeout=5))
    result.passed, result.status ("passed" / "failed" / "timeout" / "killed"), result.stderr, result.seconds

What contains a program (each layer is reported in `result.containment`):
  - where `bwrap` works (a one-time probe): bubblewrap, as user 65534 without capabilities in its own user, mount,
    PID, network, IPC, UTS and cgroup namespaces; the system and this Python read-only, a fresh /proc, only its
    temporary folder writable, a cleared environment. This is the security boundary; code benchmarks refuse to
    run without it (UnsafeExecError) unless the user passes --unsafe-exec (`require_isolation`);
  - a separate process in its own session, killed as a whole (SIGKILL) on the wall-clock timeout and swept again;
  - `resource` limits: CPU seconds, address space, size of any file written, number of processes; as root a pids
    cgroup; without bubblewrap `unshare --net --pid` where the OS allows;
  - a Python audit hook refusing writes outside the folder, sockets, new processes, signals and ctypes.

Without bubblewrap this is NOT a security boundary (see NOT_CONTAINED_UNSAFE and docs/evaluation.md).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from sftune import scratch
from sftune.errors import UserError

STDERR_TAIL = 2000  # characters of stderr / stdout kept in a result
_UNSHARE = ("unshare", "--net", "--pid", "--fork", "--kill-child")


@dataclass(frozen=True)
class Limits:
    """Per-program limits: wall-clock and CPU seconds, address space, size of a written file, processes."""

    timeout: float = 10.0
    cpu_seconds: int = 10
    memory_mb: int = 1024
    file_size_mb: int = 16
    processes: int = 16


@dataclass
class SandboxResult:
    """How a program ended: passed (exit 0), failed (an exception, a refused action, a non-zero exit),
    timeout (wall clock or CPU time), killed (another signal, e.g. a file over the size limit)."""

    passed: bool
    status: Literal["passed", "failed", "timeout", "killed"]
    stderr: str = ""
    stdout: str = ""
    seconds: float = 0.0
    returncode: int | None = None
    containment: dict[str, str] = field(default_factory=dict)  # network, processes: which mechanism held
    folder: str = ""  # the temporary folder it ran in (already removed)


# Runs first in the sandboxed interpreter. As the init of a PID namespace (pid 1, which ignores default
# signals) it forks once and reports the child's exit status; then it installs the audit hook and runs the program.
_PREAMBLE = r'''
import os, sys, json
_status_path, _audit = sys.argv[1], sys.argv[2] == "audit"
_status_fd = int(_status_path[3:]) if _status_path.startswith("fd:") else None
if os.getpid() == 1 or _status_fd is not None:
    _child = os.fork()
    if _child:
        _, _wait = os.waitpid(_child, 0)
        _report = json.dumps({"signal": os.WTERMSIG(_wait) if os.WIFSIGNALED(_wait) else None,
                              "code": os.WEXITSTATUS(_wait) if os.WIFEXITED(_wait) else None})
        if _status_fd is None:
            with open(_status_path, "w") as _f:
                _f.write(_report)
        else:
            os.write(_status_fd, _report.encode())
        os._exit(0)
    if _status_fd is not None:
        os.close(_status_fd)

def _sandbox():
    import os, sys
    root = os.path.realpath(os.getcwd())
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    refused = {"socket.connect": "network access", "socket.bind": "network access", "socket.sendto": "network access",
               "socket.sendmsg": "network access", "os.fork": "starting a process", "os.forkpty": "starting a process",
               "os.system": "starting a process", "os.exec": "starting a process", "os.posix_spawn": "starting a process",
               "os.spawn": "starting a process", "subprocess.Popen": "starting a process", "os.startfile": "starting a process",
               "os.kill": "signalling a process", "os.killpg": "signalling a process",
               "signal.pthread_kill": "signalling a process", "ctypes.dlopen": "ctypes", "ctypes.dlsym": "ctypes",
               "ctypes.cdata": "ctypes"}
    paths = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.chmod": (0,), "os.chown": (0,),
             "os.truncate": (0,), "os.utime": (0,), "os.rename": (0, 1), "os.link": (1,), "os.symlink": (1,),
             "shutil.rmtree": (0,), "os.setxattr": (0,), "os.removexattr": (0,), "os.chflags": (0,)}

    def inside(path):
        if isinstance(path, int) or path is None:
            return True
        real = os.path.realpath(os.fsdecode(path))
        return real == root or real.startswith(root + os.sep)

    def hook(event, args):
        if event in refused:
            raise PermissionError(f"sandbox: {refused[event]} is refused ({event})")
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & write_flags)
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing outside the temporary folder is refused: {path}")
        elif event in paths:
            for k in paths[event]:
                if k < len(args) and not inside(args[k]):
                    raise PermissionError(f"sandbox: changing files outside the temporary folder is refused: "
                                          f"{args[k]} ({event})")

    sys.addaudithook(hook)

with open("program.py", encoding="utf-8") as _f:
    _code = compile(_f.read(), "program.py", "exec")
if _audit:
    _sandbox()
sys.argv = ["program.py"]
del _f, _sandbox, _status_path, _status_fd, _audit, os, sys, json
exec(_code, {"__name__": "__main__", "__file__": "program.py", "__builtins__": __builtins__})
'''


@functools.cache
def _unshare_works() -> bool:
    """Whether `unshare --net --pid` can run here (root, or a kernel that lets this user create namespaces)."""
    if shutil.which("unshare") is None:
        return False
    try:
        return subprocess.run([*_UNSHARE, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


NOBODY = 65534  # the user and group a program runs as inside bubblewrap's user namespace
_BWRAP = ("bwrap", "--unshare-all", "--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY), "--cap-drop", "ALL",
          "--die-with-parent", "--new-session", "--hostname", "sandbox")
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")  # read-only, or the same symlinks
_ETC = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/localtime")
UNSAFE_EXEC = "--unsafe-exec"


class UnsafeExecError(UserError, RuntimeError):
    """Generated code would run without the isolation of bubblewrap, and the user did not allow it."""


def _interpreter() -> str:
    """The Python that runs programs: this one's base interpreter (a venv's packages are not needed)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _under(path: str, tops: Sequence[str]) -> bool:
    return any(path == top or path.startswith(top + os.sep) for top in tops)


def _bwrap_view() -> list[str]:
    """bubblewrap's mounts: the system and this Python read-only, a fresh /proc and /dev, an empty /tmp;
    no /etc beyond the dynamic loader's files, no /root, /home, /work, /run or /var."""
    args: list[str] = []
    for top in _SYSTEM:
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for path in _ETC:
        if os.path.exists(path):
            args += ["--ro-bind", path, path]
    prefix, python = os.path.realpath(sys.base_prefix), _interpreter()
    if not _under(prefix, _SYSTEM):
        args += ["--ro-bind", prefix, prefix]
    if not _under(python, (*_SYSTEM, prefix)):
        args += ["--ro-bind", python, python]
    return args + ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]


def _bwrap_command(work: Path, status_fd: int, audit_hook: bool) -> list[str]:
    """The command that runs the program under bubblewrap, its folder the only writable path."""
    inside_env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": str(work),
                  "TMPDIR": str(work)}
    return [*_bwrap_flags(), *_bwrap_view(), "--bind", str(work), str(work), "--chdir", str(work), "--clearenv",
            *(a for k, v in inside_env.items() for a in ("--setenv", k, v)), "--",
            _interpreter(), "-I", "-B", "-c", _PREAMBLE, f"fd:{status_fd}", "audit" if audit_hook else "none"]


@functools.cache
def _bwrap_flags() -> tuple[str, ...]:
    """bubblewrap's namespace flags that work on this machine (with --disable-userns where bwrap has it:
    no nested user namespace inside), or () where bwrap is missing or may not create namespaces here."""
    if shutil.which("bwrap") is None:
        return ()
    for flags in ((*_BWRAP, "--disable-userns"), _BWRAP):
        probe = [*flags, *_bwrap_view(), "--", _interpreter(), "-I", "-c", "pass"]
        try:
            if subprocess.run(probe, capture_output=True, timeout=20).returncode == 0:
                return flags
        except (OSError, subprocess.TimeoutExpired):
            continue
    return ()


def isolated() -> bool:
    """Whether programs run isolated by bubblewrap on this machine (installed, and the kernel lets it work)."""
    return bool(_bwrap_flags())


CONTAINED = ("reads only the system's read-only files and its own folder (no /etc/shadow, /root, /home or other "
             "users' files); writes only its folder; sees only its own processes (a fresh /proc: no other "
             "process's environment); no network (not even 127.0.0.1); runs as user 65534 without capabilities")
NOT_CONTAINED_UNSAFE = ("reading any file this user may read (/etc/shadow as root), other processes' environments "
                        "through /proc (API keys), native code writing outside its folder or starting processes "
                        "(the audit hook is Python-level and can be switched off from inside), and, without "
                        "`unshare`, the network")


def require_isolation(unsafe_exec: bool, what: str = "generated code") -> None:
    """Refuse to run `what` without bubblewrap's isolation unless the user passed --unsafe-exec."""
    if unsafe_exec or isolated():
        return
    raise UnsafeExecError(
        f"{what} would run without isolation: bubblewrap (`bwrap`) is {'missing' if shutil.which('bwrap') is None else 'installed but may not create user namespaces here'}. "
        "Install it (Debian/Ubuntu: apt-get install bubblewrap; on Ubuntu 24.04+ also allow unprivileged user "
        f"namespaces for it) or, knowing the risk, pass {UNSAFE_EXEC}. Contained then: time, memory, file size, "
        f"process count, the caller's environment variables. NOT contained: {NOT_CONTAINED_UNSAFE}.")


def _pids_cgroup(limit: int) -> Path | None:
    """A fresh pids cgroup capped at `limit` tasks (cgroup v1 or v2), or None where this process may not make one."""
    if os.geteuid() != 0:
        return None
    for parent in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        folder = parent / f"sftune-sandbox-{uuid.uuid4().hex[:12]}"
        try:
            folder.mkdir()
        except OSError:
            continue
        try:
            (folder / "pids.max").write_text(str(limit))
            return folder
        except OSError:
            folder.rmdir()
    return None


def _user_processes() -> int:
    """How many processes this user runs now (RLIMIT_NPROC counts them all, not only the program's)."""
    uid, count = os.getuid(), 0
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                count += 1
        except OSError:
            continue
    return count


def _limit_child(limits: Limits, cgroup: Path | None) -> None:
    """In the child, before exec: join the pids cgroup and set the resource limits (nothing here may import or
    take a lock: the parent may have other threads)."""
    if cgroup is not None:
        (cgroup / "cgroup.procs").write_text("0")
    mb = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb, limits.memory_mb * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_mb * mb, limits.file_size_mb * mb))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _sweep(process: subprocess.Popen, cgroup: Path | None) -> None:
    """Kill the program's whole process group, and every task left in its cgroup, then remove the cgroup."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if cgroup is None:
        return
    for _ in range(100):
        pids = [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)
    try:
        cgroup.rmdir()
    except OSError:
        pass


def _read_ready(fd: int) -> bytes:
    """What the program's side has written to the pipe `fd` so far, without waiting for more."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 65536)
    except BlockingIOError:
        return b""


def _tail(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 4 * STDERR_TAIL))
        return f.read().decode("utf-8", "replace")[-STDERR_TAIL:]


def available() -> dict[str, bool]:
    """Which OS mechanisms this machine gives the sandbox: network/PID namespaces, a pids cgroup, RLIMIT_NPROC,
    bubblewrap."""
    cgroup = _pids_cgroup(1)
    if cgroup is not None:
        cgroup.rmdir()
    return {"namespaces": _unshare_works(), "pids_cgroup": cgroup is not None, "rlimit_nproc": os.geteuid() != 0,
            "bubblewrap": isolated()}


def run(program: str, limits: Limits = Limits(), *, network_namespace: bool = True,
        audit_hook: bool = True, bubblewrap: bool = True) -> SandboxResult:
    """Run `program` (Python source) in the sandbox; passed means it exited 0 within the limits.
    `network_namespace=False` / `audit_hook=False` / `bubblewrap=False` switch those layers off (to test the
    others alone; without bubblewrap the program runs as the caller, as before bubblewrap was used)."""
    folders = contextlib.ExitStack()  # one scratch folder (swept at the next start if this process is killed)
    root = folders.enter_context(scratch.folder(prefix="sftune-sandbox-"))
    work, private = root / "work", root / "io"  # the program's folder; its output and exit status, out of its reach
    work.mkdir(mode=0o700)
    private.mkdir(mode=0o700)
    (work / "program.py").write_text(program, encoding="utf-8")
    status_path = private / "status.json"
    use_bwrap = bubblewrap and isolated()
    use_unshare = network_namespace and not use_bwrap and _unshare_works()
    cgroup = _pids_cgroup(limits.processes)
    nproc_applies = os.geteuid() != 0 or use_bwrap  # without capabilities, the kernel applies it to root too
    containment = {
        "isolation": ("bubblewrap: own user (65534, no capabilities), mount, PID, network, IPC, UTS and cgroup "
                      f"namespaces; {CONTAINED}") if use_bwrap else f"none (not contained: {NOT_CONTAINED_UNSAFE})",
        "network": "bubblewrap --unshare-net (loopback of its own only)" if use_bwrap else
                   "unshare --net (no interface up)" if use_unshare else
                   "audit hook only (Python-level)" if audit_hook else "none",
        "processes": " + ".join(name for name, on in (("pids cgroup", cgroup is not None),
                                                      ("pid namespace", use_unshare or use_bwrap),
                                                      ("RLIMIT_NPROC", nproc_applies), ("audit hook", audit_hook))
                                if on) or "process group kill only",
    }
    nproc = limits.processes + (_user_processes() if nproc_applies else 0)
    read_status, write_status = os.pipe() if use_bwrap else (-1, -1)
    if use_bwrap:
        command = _bwrap_command(work, write_status, audit_hook)
    else:
        command = [*(_UNSHARE if use_unshare else ()), sys.executable, "-I", "-B", "-c", _PREAMBLE, str(status_path),
                   "audit" if audit_hook else "none"]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work)}

    def preexec() -> None:
        _limit_child(limits, cgroup)
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

    started = time.perf_counter()
    timed_out = False
    try:
        with open(private / "stdout", "wb") as out, open(private / "stderr", "wb") as err:
            process = subprocess.Popen(command, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                       start_new_session=True, preexec_fn=preexec, close_fds=True,
                                       pass_fds=(write_status,) if use_bwrap else ())
            if use_bwrap:
                os.close(write_status)
            try:
                process.wait(timeout=limits.timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            _sweep(process, cgroup)
            process.wait()
        seconds = time.perf_counter() - started
        code, sig = process.returncode, None
        if code is not None and code < 0:
            code, sig = None, -code
        if use_bwrap and not timed_out:  # the preamble reported its child's end through the pipe
            status_path.write_bytes(_read_ready(read_status))
        if (use_unshare or use_bwrap) and status_path.exists():  # the namespace init reported its child's end
            reported = json.loads(status_path.read_text() or "{}")
            code, sig = reported.get("code"), reported.get("signal")
        elif (use_unshare or use_bwrap) and not timed_out and sig is None:
            code, sig = None, signal.SIGKILL  # the init itself died (e.g. out of memory) before reporting
        stderr, stdout = _tail(private / "stderr"), _tail(private / "stdout")
    finally:
        if use_bwrap:
            os.close(read_status)
        if cgroup is not None and cgroup.exists():
            try:
                cgroup.rmdir()
            except OSError:
                pass
        folders.close()
    if timed_out:
        status = "timeout"
        stderr += f"\nsandbox: killed after the wall-clock limit of {limits.timeout:g} s"
    elif sig == signal.SIGXCPU:
        status = "timeout"
        stderr += f"\nsandbox: killed at the CPU-time limit of {limits.cpu_seconds} s"
    elif sig is not None:
        status = "killed"
        stderr += f"\nsandbox: killed by signal {signal.Signals(sig).name}"
    else:
        status = "passed" if code == 0 else "failed"
    return SandboxResult(passed=status == "passed", status=status, stderr=stderr[-STDERR_TAIL:], stdout=stdout,
                         seconds=seconds, returncode=code, containment=containment, folder=str(work))


def run_many(programs: Sequence[str], limits: Limits = Limits(), *, workers: int | None = None,
             network_namespace: bool = True, audit_hook: bool = True, bubblewrap: bool = True) -> list[SandboxResult]:
    """Run several programs in parallel (one sandbox each); results in the order given."""
    workers = workers or max(1, min(len(programs), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda p: run(p, limits, network_namespace=network_namespace, audit_hook=audit_hook,
                                           bubblewrap=bubblewrap), programs))
