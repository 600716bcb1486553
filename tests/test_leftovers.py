"""Nothing outlives a run: after ``python -m pipeline process`` exits, whatever the exit, no
process of the run is left (the forkserver and the resource tracker included, zombies too) and
nothing of it is left in TMPDIR.

Each run starts in a session of its own (``start_new_session``), with a private TMPDIR (see
:func:`private_tmp`), so the check is exact: once the command has exited, no process of that
session may be in the process table, and TMPDIR must be empty. Both are checked at once,
without waiting: the command must have stopped and waited for its helpers before it exited.
Meanwhile the test process is a "child subreaper" (Linux): a helper the command left behind is
handed to the test instead of ``init``, which would soon reap it and hide it; the test finds
it, alive or a zombie, every time.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.conftest import by_key
from tests.test_faults_sigint import _check_ledger

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "sample_data" / "images"
EDGE = ROOT / "sample_data" / "edge"

#: Longest a test waits for a run to get going or to end (a busy machine is slow, not stuck).
DEADLINE = 60.0
BUSY_POLL = 0.05  # s between two looks at a worker's CPU time


def _suppress_gone() -> contextlib.suppress:
    """A process that exits while we look at it is no error."""
    return contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError)


@dataclass
class Run:
    """A ``python -m pipeline process`` run in a session of its own, with a private TMPDIR."""

    proc: subprocess.Popen[bytes]
    out: Path
    tmp: Path
    stderr: Path

    @property
    def sid(self) -> int:
        return self.proc.pid  # the session leader's pid is the session id

    def wait(self) -> int:
        return self.proc.wait(timeout=DEADLINE)

    def errors(self) -> str:
        return self.stderr.read_text(errors="replace")

    def helpers(self) -> tuple[psutil.Process | None, psutil.Process | None]:
        """The forkserver and the resource tracker while the run is alive (None: not yet).

        ``python -m pipeline`` forks its forkserver (``pipeline.forkserver._fork_server``): a
        child with the command's own command line; a new interpreter's says what it runs.
        """
        found: dict[str, psutil.Process] = {}
        with _suppress_gone():
            parent = psutil.Process(self.proc.pid)
            command = parent.cmdline()
            for child in parent.children():
                with _suppress_gone():
                    cmdline = child.cmdline()
                    if cmdline == command:
                        found["forkserver"] = child
                    for name in ("forkserver", "resource_tracker"):
                        if f"multiprocessing.{name} import main" in " ".join(cmdline):
                            found[name] = child
        return found.get("forkserver"), found.get("resource_tracker")

    def workers(self) -> list[psutil.Process]:
        """The process workers now: the forkserver's children."""
        forkserver, _ = self.helpers()
        if forkserver is None:
            return []
        with _suppress_gone():
            return list(forkserver.children())
        return []


def _session(sid: int) -> list[str]:
    """Every process of session ``sid`` in the process table, zombies included."""
    left = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) != sid:
                continue
            proc = psutil.Process(pid)
            left.append(f"pid {pid} ({proc.status()}): {' '.join(proc.cmdline())[:160]}")
        except psutil.ZombieProcess:  # before NoSuchProcess: a subclass
            left.append(f"pid {pid} (zombie)")
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue  # gone meanwhile, or not ours
    return left


def _reap_adopted(run: Run) -> None:
    """Reap the exited processes of ``run``'s session that :func:`adopt` handed to the test
    process (orphans; the command itself is ``Popen``'s to wait for)."""
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError, ChildProcessError):
            mine = child.pid != run.proc.pid and os.getsid(child.pid) == run.sid
            if mine and child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)


def _kill_session(sid: int) -> None:
    """Kill what is left of session ``sid``; reap what was handed to us (see :func:`adopt`)."""
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == sid:
                os.kill(pid, signal.SIGKILL)
                if psutil.Process(pid).ppid() == os.getpid():
                    os.waitpid(pid, 0)
        except (ProcessLookupError, PermissionError, ChildProcessError, psutil.NoSuchProcess):
            continue


_PR_SET_CHILD_SUBREAPER = 36  # prctl(2), <linux/prctl.h>


def _set_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


@pytest.fixture
def adopt() -> Iterator[None]:
    """While the test runs, orphaned descendants become the test process's children, not
    ``init``'s: one the command left behind stays in the process table (a zombie once it has
    exited) until the test reaps it."""
    if not sys.platform.startswith("linux"):
        pytest.skip("child subreapers are Linux's")
    _set_subreaper(True)
    try:
        yield
    finally:
        _set_subreaper(False)


@pytest.fixture
def private_tmp() -> Iterator[Callable[[], Path]]:
    """New empty folders for the runs' TMPDIR, removed after the test.

    Not under ``tmp_path``, and in ``/tmp`` when the system's temp folder has a longer name:
    multiprocessing puts the forkserver's socket in a ``pymp-*`` folder of TMPDIR, and a
    socket's path may not exceed 107 bytes, which a TMPDIR deep under pytest's base folder
    soon does.
    """
    made: list[Path] = []
    base = tempfile.gettempdir()
    if os.path.isdir("/tmp") and os.access("/tmp", os.W_OK) and len(base) > len("/tmp"):
        base = "/tmp"

    def make() -> Path:
        made.append(Path(tempfile.mkdtemp(prefix="lo-", dir=base)))
        return made[-1]

    yield make
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def start(
    tmp_path: Path, adopt: None, private_tmp: Callable[[], Path]
) -> Iterator[Callable[..., Run]]:
    """``start(*inputs, *options)``: a process run into ``tmp_path/out``; stopped (its whole
    session) when the test ends, so a failing test never leaves one behind."""
    runs: list[Run] = []

    def start_run(*args: str | Path) -> Run:
        n = len(runs)
        tmp, out, err = private_tmp(), tmp_path / f"out{n}", tmp_path / f"stderr{n}.txt"
        env = {**os.environ, "TMPDIR": str(tmp)}
        cmd = [sys.executable, "-m", "pipeline", "process", *map(str, args)]
        cmd += ["--output", str(out), "--quiet"]
        with err.open("wb") as stderr:
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        runs.append(Run(proc, out, tmp, err))
        return runs[-1]

    yield start_run
    for run in runs:
        _kill_session(run.sid)
        if run.proc.poll() is None:
            run.proc.kill()
        run.proc.wait(timeout=10)


def assert_nothing_left(run: Run) -> None:
    """The command has exited: no process of its session, nothing in its TMPDIR, right now;
    but for a zombie, given a moment: a worker killed just before its forkserver exited (the
    forkserver does not wait for its children when its "alive" pipe closes) is an orphan that
    ``init`` reaps in its own time. Under :func:`adopt` the test process is that orphan's new
    parent, so the test reaps it, as ``init`` would (it stayed for good, failing the test, in
    about one full suite of three on a loaded machine). A process still alive fails at once."""
    assert run.proc.returncode is not None
    left, deadline = _session(run.sid), time.monotonic() + 5
    while left and all(p.endswith("(zombie)") for p in left) and time.monotonic() < deadline:
        _reap_adopted(run)
        time.sleep(0.05)
        left = _session(run.sid)
    assert left == [], run.errors()
    assert sorted(p.name for p in run.tmp.iterdir()) == [], run.errors()


@pytest.fixture(scope="module")
def slow_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12 MP PNG that is small on disk (a smooth gradient) but takes a worker ~0.1-0.2 s to
    decode and resize: hard-linked many times, it makes a run as long as needed."""
    import numpy as np
    from PIL import Image

    w, h = 4000, 3000
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    pixels = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1).astype(np.uint8)
    path = tmp_path_factory.mktemp("slow") / "slow.png"
    Image.fromarray(pixels).save(path, compress_level=1)
    return path


def _slow_inputs(image: Path, folder: Path, n: int) -> Path:
    folder.mkdir()
    for i in range(n):
        os.link(image, folder / f"p{i:04d}.png")
    return folder


def _wait_until(what: str, run: Run, ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not ready():
        assert run.proc.poll() is None, f"the run ended before {what}:\n{run.errors()}"
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.02)


def _wait_for_work(run: Run) -> None:
    """Until both workers are up and a thumbnail is written: items are being processed."""
    _wait_until(
        "got going",
        run,
        lambda: len(run.workers()) >= 2 and any(run.out.glob("*/*.png")),
    )
    forkserver, tracker = run.helpers()
    # what must not outlive the run
    assert forkserver is not None
    assert tracker is None  # python -m pipeline starts none (without_resource_tracker)


def _busy_worker(run: Run) -> psutil.Process | None:
    """A worker busy right now (its CPU time grew by most of the last poll interval, not only
    some time ago), or None if the run has ended meanwhile."""
    last: dict[int, float] = {}
    deadline = time.monotonic() + DEADLINE
    while run.proc.poll() is None:
        assert time.monotonic() < deadline, "no worker ever got busy"
        for worker in run.workers():
            with _suppress_gone():
                cpu = sum(worker.cpu_times()[:2])
                before = last.get(worker.pid)
                last[worker.pid] = cpu
                if before is not None and cpu - before >= 0.6 * BUSY_POLL:
                    return worker
        time.sleep(BUSY_POLL)
    return None


def _crash_logged(run: Run, pid: int) -> str:
    """The run's report of the death of worker ``pid`` (what follows "killed by SIGKILL")."""
    pattern = re.compile(rf"worker crash \d+/\d+: worker pid {pid} was killed by SIGKILL(.*)")
    found: list[str] = []

    def logged() -> bool:
        found[:] = pattern.findall(run.errors())
        return bool(found)

    _wait_until(f"the death of worker {pid} was reported", run, logged)
    return found[0]


def _statuses(out: Path) -> dict[str, list[str]]:
    """error type (or status) -> keys."""
    found: dict[str, list[str]] = {}
    for key, rec in sorted(by_key(out).items()):
        found.setdefault(rec.get("error_type") or rec["status"], []).append(key)
    return found


# -- the exits ---------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_run_that_succeeds_leaves_nothing(start: Callable[..., Run]) -> None:
    run = start(IMAGES)
    assert run.wait() == 0, run.errors()
    assert_nothing_left(run)
    assert set(_statuses(run.out)) == {"ok"}


@pytest.mark.timeout(60)
def test_a_run_with_failed_items_leaves_nothing(start: Callable[..., Run]) -> None:
    run = start(EDGE)
    assert run.wait() == 1, run.errors()
    assert_nothing_left(run)
    statuses = _statuses(run.out)
    assert "ok" in statuses
    assert len(statuses) > 1  # some failed


@pytest.mark.timeout(60)
def test_ctrl_c_leaves_nothing(start: Callable[..., Run], slow_image: Path, tmp_path: Path) -> None:
    n = 60  # far more than the run gets through before the Ctrl-C
    run = start(_slow_inputs(slow_image, tmp_path / "in", n))
    _wait_for_work(run)
    run.proc.send_signal(signal.SIGINT)  # to the command itself, as a terminal's Ctrl-C does
    assert run.wait() == 130, run.errors()
    assert_nothing_left(run)
    counts = _check_ledger(run.out, n)
    assert counts.get("ok", 0) < n


@pytest.mark.timeout(90)
def test_ctrl_z_pauses_the_workers_with_the_command_and_fg_resumes_them(
    slow_image: Path, tmp_path: Path, private_tmp: Callable[[], Path], adopt: None
) -> None:
    """Ctrl-Z stops the terminal's foreground job, the command's process group; the workers
    lead groups of their own, so the command stops them itself, and continues them when it is
    continued (``fg``). They went on with the batches they held while the command stood still.

    The command is started as a shell starts a job: a process group of its own in this
    process's session (a group whose parent is elsewhere in its session is not orphaned, so a
    stop signal stops it, as on a terminal)."""
    n = 24
    tmp, out, err = private_tmp(), tmp_path / "out", tmp_path / "stderr.txt"
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "process",
        str(_slow_inputs(slow_image, tmp_path / "in", n)),
    ]
    with err.open("wb") as stderr:
        proc = subprocess.Popen(
            [*cmd, "--output", str(out), "--quiet"],
            cwd=ROOT,
            env={**os.environ, "TMPDIR": str(tmp)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            process_group=0,
        )
    run = Run(proc, out, tmp, err)
    everyone: list[psutil.Process] = []
    try:
        _wait_for_work(run)
        forkserver, _ = run.helpers()
        workers = run.workers()
        everyone = [psutil.Process(proc.pid), *([forkserver] if forkserver else []), *workers]
        os.killpg(proc.pid, signal.SIGTSTP)  # what the terminal sends its foreground job

        def stopped(p: psutil.Process) -> bool:
            with _suppress_gone():
                return p.status() == psutil.STATUS_STOPPED
            return False

        deadline = time.monotonic() + 10
        while not (stopped(everyone[0]) and all(stopped(w) for w in workers)):
            assert time.monotonic() < deadline, [(p.pid, p.status()) for p in everyone]
            time.sleep(0.02)
        cpu = [sum(w.cpu_times()[:2]) for w in workers]
        written = len(list(out.glob("*/*.png")))
        time.sleep(0.5)
        assert [sum(w.cpu_times()[:2]) for w in workers] == cpu  # none of them works
        assert len(list(out.glob("*/*.png"))) == written
        os.killpg(proc.pid, signal.SIGCONT)  # fg
        assert run.wait() == 0, run.errors()
        assert [r["status"] for r in by_key(out).values()] == ["ok"] * n
        _, alive = psutil.wait_procs(everyone, timeout=DEADLINE)
        assert alive == []
    finally:
        for p in (psutil.Process(proc.pid), *everyone) if proc.poll() is None else everyone:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
        proc.wait(timeout=DEADLINE)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("to", ["command", "group"])
def test_sigterm_stops_the_run_as_ctrl_c_does_and_leaves_nothing(
    start: Callable[..., Run], slow_image: Path, tmp_path: Path, to: str
) -> None:
    """``docker stop``, ``kill``: SIGTERM to the command; a batch scheduler (Slurm's
    ``scancel``): to every process of the run. Either way the run stops as on Ctrl-C (grace
    period, ledger written) and exits 143; its workers, which ignore the signal, are stopped by
    the run, and no item is failed as a worker crash."""
    n = 60  # far more than the run gets through before the signal
    run = start(_slow_inputs(slow_image, tmp_path / "in", n))
    _wait_for_work(run)
    if to == "command":
        run.proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(run.proc.pid, signal.SIGTERM)  # its own session: the run's processes only
    assert run.wait() == 143, run.errors()
    assert_nothing_left(run)
    counts = _check_ledger(run.out, n, exit_code=143)
    assert counts.get("ok", 0) < n
    assert "failed" not in counts, run.errors()  # no worker died of it
    assert "crash" not in run.errors()
    assert json.loads((run.out / "summary.json").read_text())["stopped_by"] == "SIGTERM"


_ON_THE_TERMINAL = """
import fcntl, os, sys, termios
fcntl.ioctl(0, termios.TIOCSCTTY, 0)
os.execv(sys.argv[1], sys.argv[1:])
"""


def _start_on_a_terminal(
    private_tmp: Callable[[], Path], tmp_path: Path, *args: str | Path
) -> tuple[Run, int, Callable[[], None]]:
    """A ``process`` run (progress shown: no ``--quiet``) whose standard streams and
    controlling terminal are a new pseudo-terminal, as in an ssh session: returns the run, the
    terminal's master end, and ``stop_reading`` (what the terminal showed goes to
    ``run.stderr``)."""
    import pty
    import threading

    master, slave = pty.openpty()
    tmp, out, shown = private_tmp(), tmp_path / "out", tmp_path / "terminal.txt"
    cmd = [sys.executable, "-m", "pipeline", "process", *map(str, args), "--output", str(out)]
    proc = subprocess.Popen(
        # the terminal becomes its controlling terminal, as a login's (the kernel hangs it up
        # when the master end is closed); then the command itself, in the same process
        [sys.executable, "-c", _ON_THE_TERMINAL, *cmd],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp), "COLUMNS": "100"},
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    reading = threading.Event()
    reading.set()

    def read() -> None:  # keeps the terminal from filling up (its writes would block)
        import select

        with shown.open("wb") as sink:
            while reading.is_set():
                if select.select([master], [], [], 0.05)[0]:
                    try:
                        sink.write(os.read(master, 65536))
                    except OSError:  # EIO: the command has closed its end
                        return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def stop_reading() -> None:
        reading.clear()
        reader.join(timeout=5)

    return Run(proc, out, tmp, shown), master, stop_reading


@pytest.mark.timeout(60)
def test_a_terminal_that_hangs_up_stops_the_run_as_ctrl_c_does_and_leaves_nothing(
    adopt: None, private_tmp: Callable[[], Path], slow_image: Path, tmp_path: Path
) -> None:
    """An ssh session that drops, a terminal window closed: the kernel hangs the terminal up
    (SIGHUP to the command, and every write to it fails from then on) and the shell sends
    SIGHUP to every process of the job. The run stops as on Ctrl-C, with nothing more to show
    on a terminal that is gone: its ledger, manifest and summary written, exit 129, nothing
    left, no item failed as a worker crash."""
    n = 60  # far more than the run gets through before the hang-up
    run, master, stop_reading = _start_on_a_terminal(
        private_tmp, tmp_path, _slow_inputs(slow_image, tmp_path / "in", n)
    )
    try:
        _wait_for_work(run)
        stop_reading()
        os.close(master)  # the hang-up
        os.killpg(run.proc.pid, signal.SIGHUP)  # the shell's, to the job's processes
        assert run.wait() == 129, run.errors()
    finally:
        _kill_session(run.sid)
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(timeout=10)
    assert_nothing_left(run)
    counts = _check_ledger(run.out, n, exit_code=129)
    assert counts.get("ok", 0) < n
    assert "failed" not in counts  # no worker died of it
    summary = json.loads((run.out / "summary.json").read_text())
    assert summary["stopped_by"] == "SIGHUP"
    assert (run.out / "manifest.jsonl").exists()


_NOHUP = """
import os, signal, sys
signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what nohup does; an ignored signal stays so
os.execv(sys.argv[1], sys.argv[1:])
"""


@pytest.mark.timeout(60)
def test_a_run_under_nohup_goes_on_through_a_hang_up(
    adopt: None, private_tmp: Callable[[], Path], slow_image: Path, tmp_path: Path
) -> None:
    """``nohup python -m pipeline process ...``: SIGHUP was ignored when the command started,
    and it stays ignored; the run does not stop at the hang-up, it finishes (exit 0)."""
    n = 30
    tmp, out, err = private_tmp(), tmp_path / "out", tmp_path / "nohup.out"
    inputs = _slow_inputs(slow_image, tmp_path / "in", n)
    cmd = [sys.executable, "-m", "pipeline", "process", str(inputs), "--output", str(out)]
    with err.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-c", _NOHUP, *cmd, "--quiet"],
            cwd=ROOT,
            env={**os.environ, "TMPDIR": str(tmp)},
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
    run = Run(proc, out, tmp, err)
    try:
        _wait_for_work(run)
        os.killpg(proc.pid, signal.SIGHUP)  # the shell's, as the session ends
        assert proc.poll() is None  # it came mid-run
        assert len(list(out.glob("*/*.png"))) < n
        assert run.wait() == 0, run.errors()
    finally:
        _kill_session(run.sid)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert_nothing_left(run)
    assert _statuses(out) == {"ok": [f"p{i:04d}.png" for i in range(n)]}


@pytest.mark.timeout(60)
def test_a_killed_worker_leaves_nothing(
    start: Callable[..., Run], slow_image: Path, tmp_path: Path
) -> None:
    n = 24
    run = start(_slow_inputs(slow_image, tmp_path / "in", n))
    _wait_for_work(run)
    # what a worker killed while writing a thumbnail leaves beside it (the victim may leave one
    # too, or be decoding): the run, whose worker died, sweeps its output tree at the end
    (size,) = {p.parent for p in run.out.glob("*/*.png")}
    half = [size / ".pp-0123abcd.tmp", size / "deep" / "er" / ".pp-4567ef01.tmp"]
    for path in half:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a thumbnail")
    for _ in range(5):
        victim = _busy_worker(run)
        assert victim is not None, f"the run ended first:\n{run.errors()}"
        victim.kill()
        if "before starting its batch" not in _crash_logged(run, victim.pid):
            break
        # it died between two batches (busy a moment ago, not now): no item was lost, the batch
        # it had been sent goes to the worker started in its place; kill one in the middle of one
    else:
        raise AssertionError(f"no kill landed in the middle of an item:\n{run.errors()}")
    assert run.wait() == 1, run.errors()  # the run went on without it
    assert_nothing_left(run)
    assert list(run.out.rglob(".pp-*")) == []
    statuses = _statuses(run.out)
    assert len(statuses["WorkerCrashed"]) == 1, statuses
    assert len(statuses["ok"]) == n - 1, statuses
    (crashed,) = statuses["WorkerCrashed"]
    assert f"pid {victim.pid} was killed by SIGKILL" in by_key(run.out)[crashed]["error"]


@pytest.mark.timeout(60)
def test_a_killed_command_leaves_nothing_once_its_workers_end(
    start: Callable[..., Run], slow_image: Path, tmp_path: Path, adopt: None
) -> None:
    """SIGKILL to the command: no exit of its own, nobody to stop the helpers. Its workers end at
    the end of their pipes; its forkserver, a fork of the command, at the end of its "alive" pipe,
    once the command and the workers are gone (they held its write end; the fork closed its own
    copy first thing)."""
    run = start(_slow_inputs(slow_image, tmp_path / "in", 60))
    _wait_for_work(run)
    forkserver, _ = run.helpers()
    assert forkserver is not None
    assert forkserver.cmdline() == psutil.Process(run.proc.pid).cmdline()  # forked
    workers = run.workers()
    run.proc.kill()
    assert run.wait() == -signal.SIGKILL
    # they are handed to this process (adopt), which reaps them as they exit
    _, alive = psutil.wait_procs([forkserver, *workers], timeout=DEADLINE)
    assert alive == []
    assert _session(run.sid) == []  # (its TMPDIR keeps what a killed process could not remove)
    # a worker that finds the run gone when it sends its results ends quietly (it printed a
    # BrokenPipeError traceback onto the terminal, after the command was gone)
    assert "Traceback" not in run.errors(), run.errors()


_SLEEPING_WORKERS = """
from pipeline import Pipeline, stage
from tests import fns

if __name__ == "__main__":
    Pipeline([stage(fns.sleep_each, 600, kind="process", workers=2)]).run(range(4), progress=False)
"""


@pytest.mark.timeout(60)
def test_the_workers_of_a_killed_program_die_with_it_not_after_their_item(adopt: None) -> None:
    """A program SIGKILLed while its workers are inside an item of ten minutes: its forkserver
    exits at the end of its "alive" pipe, and the kernel kills the workers with it
    (PR_SET_PDEATHSIG). Before, each finished its item first (and wrote its outputs into a
    folder that the next run might hold by then): it learnt the run was gone only when it sent
    the result."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLEEPING_WORKERS],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        workers: list[psutil.Process] = []
        while len(workers) < 2:  # the forkserver's children: the workers, each in its item
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.05)
            with _suppress_gone():
                servers = psutil.Process(proc.pid).children()
                workers = [w for f in servers for w in f.children()]
        proc.kill()
        assert proc.wait() == -signal.SIGKILL
        _, alive = psutil.wait_procs(workers, timeout=20)  # not the ten minutes of their item
        assert alive == []
    finally:
        _kill_session(proc.pid)
        if proc.stderr is not None:
            proc.stderr.close()


_INTERRUPTED_AT_START = """
import sys
import app.warmup

def interrupted():  # what a Ctrl-C does while the command imports the rest of itself
    raise KeyboardInterrupt

app.warmup.the_commands_process = interrupted
sys.argv = ["pixpipe", "process", sys.argv[1], "--output", sys.argv[2], "--quiet"]
from pipeline.__main__ import run
run()
"""


@pytest.mark.timeout(60)
def test_ctrl_c_while_the_command_starts_exits_130_and_leaves_nothing(
    tmp_path: Path, adopt: None, private_tmp: Callable[[], Path]
) -> None:
    """After the forkserver has started (a fork, first thing), before the run: exit 130, as a
    Ctrl-C during the run exits, no traceback, no process left, nothing done."""
    tmp, out = private_tmp(), tmp_path / "out"
    _ends_cleanly(130, tmp, _INTERRUPTED_AT_START, str(IMAGES), str(out))
    assert not out.exists()


def _ends_cleanly(code: int, tmp: Path, program: str, *args: str) -> None:
    """``python -c program *args`` (TMPDIR ``tmp``, its own session) exits ``code`` without a
    traceback, its helpers stopped and reaped before the exit, nothing left in ``tmp``."""
    with subprocess.Popen(
        [sys.executable, "-c", program, *args],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        _, errors = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == code, errors
    assert "Traceback" not in errors, errors
    assert _session(proc.pid) == []
    assert sorted(p.name for p in tmp.iterdir()) == []


_TERMINATED_OUTSIDE_THE_RUN = """
import os, signal, sys, time
import app.process
import app.warmup

SIG = getattr(signal, sys.argv[4])

def terminated(*args):  # what a SIGTERM (SIGHUP) does while the command starts, or after its run
    os.kill(os.getpid(), SIG)
    time.sleep(30)  # the handler ends it meanwhile

if sys.argv[3] == "start":
    app.warmup.the_commands_process = terminated
else:
    app.process.after_run = terminated  # the run, its ledger and report are done by then
sys.argv = ["pixpipe", "process", sys.argv[1], "--output", sys.argv[2], "--quiet"]
from pipeline.__main__ import run
run()
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("when", ["start", "end"])
@pytest.mark.parametrize(("sig", "code"), [("SIGTERM", 143), ("SIGHUP", 129)])
def test_sigterm_or_sighup_outside_the_run_ends_the_command_cleanly(
    tmp_path: Path, adopt: None, private_tmp: Callable[[], Path], when: str, sig: str, code: int
) -> None:
    """No run owns SIGTERM (or SIGHUP) while the command starts or does its end-of-run work:
    the command ends then as on Ctrl-C (no traceback, the helpers stopped and reaped), and
    exits 143 (129)."""
    tmp, out = private_tmp(), tmp_path / "out"
    _ends_cleanly(code, tmp, _TERMINATED_OUTSIDE_THE_RUN, str(IMAGES), str(out), when, sig)
    if when == "start":
        assert not out.exists()
    else:  # the run was over: its records and summary are there, not interrupted
        summary = json.loads((out / "summary.json").read_text())
        assert summary["finished"] is True
        assert summary["interrupted"] is False


@pytest.mark.timeout(60)
def test_a_run_past_its_crash_budget_leaves_nothing(
    start: Callable[..., Run], slow_image: Path, tmp_path: Path
) -> None:
    n = 100  # far more than the run gets through while its workers are killed
    run = start(_slow_inputs(slow_image, tmp_path / "in", n))
    _wait_for_work(run)
    killed = 0
    while (victim := _busy_worker(run)) is not None:  # each kill fails the item it was running
        with _suppress_gone():
            victim.kill()
            killed += 1
    assert run.wait() == 3, run.errors()  # past the default budget of 10 crashes
    assert_nothing_left(run)
    assert killed > 10
    summary = json.loads((run.out / "summary.json").read_text())
    assert summary["exit_code"] == 3
    assert "CrashBudgetExceeded" in run.errors()
    assert "WorkerCrashed" in _statuses(run.out)


@pytest.mark.timeout(90)
def test_a_dask_run_leaves_no_process(start: Callable[..., Run]) -> None:
    """The LocalCluster the run starts goes with it, and so does the resource tracker that
    multiprocessing starts for the cluster's worker processes."""
    pytest.importorskip("distributed")
    run = start(IMAGES, "--backend", "dask")
    assert run.wait() == 0, run.errors()
    assert _session(run.sid) == [], run.errors()
    # the cluster's scratch space is a folder of the run, removed with it (Dask's default,
    # TMPDIR/dask-scratch-space, would stay); nothing of multiprocessing's stays either
    assert list(run.tmp.iterdir()) == []


def _script_in_session(
    script: str, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str, list[str]]:
    """``python -c script args`` in a session of its own: its exit code, stdout, stderr, and
    what is left of its session once it has exited (killed then)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=DEADLINE)
        return proc.returncode, out.decode(), err.decode(), _session(proc.pid)
    finally:
        _kill_session(proc.pid)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# -- pipeline.forkserver.shutdown, for programs that embed the engine ----------------------------
#: What the embedded programs below share: the helpers' pids, and the check that pids were reaped.
_HELPERS = """
import os
import multiprocessing.forkserver as fs
import multiprocessing.resource_tracker as rt

def helpers():
    return fs._forkserver._forkserver_pid, rt._resource_tracker._pid

def assert_reaped(pids):  # not even a zombie
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        else:
            raise AssertionError(f"pid {pid} was not reaped")
"""

_EMBEDDED = (
    _HELPERS
    + """
import os, signal, sys
from pipeline import Pipeline, stage
from pipeline.forkserver import shutdown
from tests.fns import double

def run():
    result = Pipeline([stage(double, kind="process", workers=2)]).run(range(8), progress=False)
    assert result.counts == {"ok": 8}, result.counts

shutdown()  # never started: nothing to do
run()
first = helpers()
assert None not in first
run()
assert helpers() == first  # runs reuse the forkserver
shutdown()
shutdown()  # idempotent
assert helpers() == (None, None)
assert_reaped(first)
run()  # a run after shutdown starts new helpers
second = helpers()
assert None not in second and set(second).isdisjoint(first)
for pid in second:  # helpers that died on their own (killed, crashed): shutdown reaps them
    os.kill(pid, signal.SIGKILL)
shutdown()
assert helpers() == (None, None)
print("OK", flush=True)
"""
)


@pytest.mark.timeout(60)
def test_shutdown_stops_and_reaps_the_helpers_of_an_embedding_program(
    adopt: None, private_tmp: Callable[[], Path]
) -> None:
    tmp = private_tmp()
    code, out, err, left = _script_in_session(_EMBEDDED, env={**os.environ, "TMPDIR": str(tmp)})
    assert code == 0, err
    assert out.strip() == "OK", err
    assert left == []
    assert list(tmp.iterdir()) == []


_WITHOUT_TRACKER = (
    _HELPERS
    + """
import multiprocessing, os
from pipeline import Pipeline, stage
from pipeline.forkserver import shutdown, without_resource_tracker
from tests.fns import double

assert without_resource_tracker()
assert not without_resource_tracker()  # once
result = Pipeline([stage(double, kind="process", workers=2)]).run(range(8), progress=False)
assert result.counts == {"ok": 8}, result.counts
server, tracker = helpers()
assert server is not None and tracker is None  # workers, and no tracker process
assert rt._resource_tracker._fd is not None  # what the forkserver handed them: /dev/null
shutdown()
assert helpers() == (None, None) and rt._resource_tracker._fd is None
assert_reaped([server])
# what starts after it gets a real tracker: named semaphores are cleaned up if it dies
lock = multiprocessing.get_context("spawn").Lock()
tracker = rt._resource_tracker._pid
assert tracker is not None
os.kill(tracker, 0)
del lock
shutdown()
assert_reaped([tracker])
print("OK", flush=True)
"""
)


@pytest.mark.timeout(60)
def test_a_process_of_its_own_runs_without_a_resource_tracker(
    adopt: None, private_tmp: Callable[[], Path]
) -> None:
    """``without_resource_tracker()`` (what ``python -m pipeline`` does): the workers run, no
    tracker process starts, and after ``shutdown()`` a spawned child gets a real one."""
    tmp = private_tmp()
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TRACKER],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp)},
        capture_output=True,
        timeout=DEADLINE,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == "OK", proc.stderr.decode()
    assert list(tmp.iterdir()) == []


# python -m pipeline with the near-duplicate grouping in its child process from 2 images on
_GROUPING_IN_A_CHILD = """
import runpy, sys
import multiprocessing.resource_tracker as rt
import app.collectors as collectors
import app.grouping as grouping

collectors.IN_PARENT = 1
_start = grouping.GroupingChild.__init__

def _spy(child, *args):
    _start(child, *args)
    print("CHILD", child._proc.pid, flush=True)

grouping.GroupingChild.__init__ = _spy
sys.argv = ["pipeline", "process", *sys.argv[1:]]
try:
    runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
finally:
    print("TRACKER", rt._resource_tracker._pid, flush=True)
"""


@pytest.mark.timeout(60)
def test_the_grouping_child_of_a_large_run_is_gone_when_the_command_exits(
    adopt: None, tmp_path: Path
) -> None:
    """A large run's near-duplicate grouping (here from 2 images on) goes to a child process: a
    plain interpreter, which needs no resource tracker (none starts); the child is waited for
    and nothing is left when the command exits."""
    code, out, err, left = _script_in_session(
        _GROUPING_IN_A_CHILD, str(IMAGES), "--output", str(tmp_path)
    )
    assert code == 0, err
    children = [line.split()[1] for line in out.splitlines() if line.startswith("CHILD")]
    assert len(children) == 1, out + err  # one grouping
    assert "TRACKER None" in out  # no resource tracker started
    assert left == []  # the forkserver and the child: gone
    assert (tmp_path / "stats.parquet").exists()
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert summary["collected"]["near_duplicates"]["max_distance"] == 6


# the same, with a grouping child that takes its time (a very large run's)
_SLOW = "grouping._PROGRAM = 'import time; time.sleep(3); ' + grouping._PROGRAM"
_SLOW_GROUPING_CHILD = _GROUPING_IN_A_CHILD.replace(
    "collectors.IN_PARENT = 1", f"collectors.IN_PARENT = 1; {_SLOW}"
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("to", ["command", "group"])
def test_ctrl_c_while_the_grouping_child_runs_leaves_nothing(
    adopt: None, tmp_path: Path, to: str
) -> None:
    """A Ctrl-C once every item is done, while the end of the run waits for its grouping child
    (3 s here), to the command alone (as ``kill -INT`` sends it) or to its whole process group
    (as a terminal sends it: the child leads a group of its own, and is not cut short with
    it): the end of the run is not cut short (as for the tables), the groups come from the
    child, which is waited for; the run's items all done, the exit is 0, nothing is left."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_GROUPING_CHILD, str(IMAGES), "--output", str(tmp_path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        line = proc.stdout.readline().decode()  # the child has started
        assert line.startswith("CHILD"), line + proc.stderr.read().decode()
        child = int(line.split()[1])
        if to == "group":
            os.killpg(proc.pid, signal.SIGINT)  # the command leads its session's group
        else:
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 0, err.decode()
        assert "Ctrl-C: stopping" in err.decode()
        assert not psutil.pid_exists(child)  # reaped
        assert _session(proc.pid) == []  # the forkserver and the child: gone
    finally:
        _kill_session(proc.pid)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert summary["counts"] == {"ok": sum(1 for p in IMAGES.rglob("*") if p.is_file())}
    assert "groups" in summary["collected"]["near_duplicates"]  # not an error


@pytest.mark.timeout(10)
def test_only_the_forkserver_freezes_its_gc_at_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    """``pipeline.worker`` makes the forkserver's exit quick (``gc.freeze`` at exit); a program
    that imports it to run pipelines keeps its own exit as it was."""
    import pipeline.worker as worker

    registered: list[object] = []
    monkeypatch.setattr(atexit, "register", registered.append)
    worker._settle_forkserver()
    assert registered == []


_STOPPED_BEFORE_THE_END = (
    _HELPERS
    + """
import time
from pipeline import Pipeline, shutdown, stage
from tests.fns import double

class Seen:
    # the helpers while the run goes (at its first record) and in its end-of-run work
    name = "seen"
    def __init__(self):
        self.during = None
    def add(self, record):
        if self.during is None:
            self.during = helpers()
    def result(self):
        return {"during": self.during, "at_end": helpers()}

def run(stop):
    result = Pipeline([stage(double, kind="process", workers=2)]).run(
        range(8), progress=False, output=os.environ["OUT"] + str(stop), collectors=[Seen()],
        stop_helpers=stop,
    )
    assert result.counts == {"ok": 8}, result.counts
    return result.collected["seen"]

kept = run(False)
assert None not in kept["during"] and kept["at_end"] == kept["during"], kept
stopped = run(True)
assert stopped["during"] == kept["during"], stopped  # the run reused them
assert stopped["at_end"] == (None, None), stopped  # forgotten: a new run starts new ones

def exited(pid):  # a zombie now: it exited, and waits to be reaped by the next shutdown()
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] == "Z"

deadline = time.monotonic() + 10
while not all(exited(pid) for pid in kept["during"]):
    assert time.monotonic() < deadline, "the helpers were not told to exit"
    time.sleep(0.01)
shutdown()
assert_reaped(kept["during"])
print("OK", flush=True)
"""
)


@pytest.mark.timeout(60)
def test_stop_helpers_stops_them_before_the_end_of_run_work(tmp_path: Path) -> None:
    """``Pipeline.run(stop_helpers=True)`` (what ``python -m pipeline`` asks): the forkserver
    and the resource tracker are told to exit before the collectors' results are built; they
    exit, and the next ``shutdown()`` reaps them."""
    proc = subprocess.run(
        [sys.executable, "-c", _STOPPED_BEFORE_THE_END],
        cwd=ROOT,
        env={**os.environ, "OUT": str(tmp_path / "out")},
        capture_output=True,
        timeout=DEADLINE,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == "OK", proc.stderr.decode()


def _start_script(tmp_path: Path, text: str, **group: bool | int) -> subprocess.Popen[bytes]:
    """The program ``text``, written to a file (process workers import it) and run with
    ``tmp_path/out`` as its argument; ``group``: its session or process group (Popen's)."""
    script = tmp_path / "script.py"
    script.write_text(text)
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "out")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **group,
    )


_EMBEDDED_SLOW_RUN = """
import json, os, sys
from pipeline import Pipeline, shutdown, stage
from tests.fns import sleep_each

class First:  # says when the run is going: its first record
    name = "first"
    def __init__(self):
        self.seen = False
    def add(self, record):
        if not self.seen:
            self.seen = True
            print("GOING", flush=True)
    def result(self):
        return None

if __name__ == "__main__":
    pipe = Pipeline([stage(sleep_each, kind="process", workers=2, kwargs={"seconds": 0.2})])
    result = pipe.run(range(40), output=sys.argv[1], progress=False, collectors=[First()])
    print("RESULT " + json.dumps({"code": result.exit_code, "counts": result.counts}), flush=True)
    shutdown()
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_program_embedding_a_run_stops_gracefully_on_a_signal_to_its_group(
    tmp_path: Path, sig: str
) -> None:
    """SIGTERM or SIGHUP to the whole process group of a program that runs a pipeline (a batch
    scheduler's ``scancel``, systemd stopping it, a terminal that hangs up): the run stops as
    on Ctrl-C, no item fails. Its forkserver, a new interpreter here (``python -m pipeline``
    forks its own), died of the signal, and the workers forked from it with it: their
    in-flight items failed as worker crashes while the run was stopping."""
    proc = _start_script(tmp_path, _EMBEDDED_SLOW_RUN, start_new_session=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().decode().strip() == "GOING"
        os.killpg(proc.pid, getattr(signal, sig))  # its own session: the run's processes only
        out, err = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 0, err.decode()
        assert _session(proc.pid) == []  # shutdown() stopped and reaped the helpers
    finally:
        _kill_session(proc.pid)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    result = json.loads(out.decode().split("RESULT ", 1)[1])
    assert result["code"] == 128 + getattr(signal, sig), err.decode()
    assert "failed" not in result["counts"], err.decode()
    assert "crash" not in err.decode()
    assert result["counts"].get("ok", 0) + result["counts"].get("cancelled", 0) == 40


_ITERATED_SLOW_RUN = """
import os, sys
from pipeline import Pipeline, shutdown, stage
from tests.fns import sleep_each

if __name__ == "__main__":
    pipe = Pipeline([stage(sleep_each, kind="process", workers=2, kwargs={"seconds": 0.1})])
    statuses = []
    for record in pipe.iter(range(30), output=sys.argv[1]):
        if not statuses:
            print("GOING", flush=True)
        statuses.append(str(record.status))
    print("STATUSES " + " ".join(sorted(set(statuses))) + f" {len(statuses)}", flush=True)
    shutdown()
"""


@pytest.mark.timeout(90)
def test_ctrl_z_pauses_the_workers_of_an_iterated_run(tmp_path: Path) -> None:
    """``Pipeline.iter`` in a program's main thread: Ctrl-Z (SIGTSTP to the program's group, as
    a shell's job) stops its workers too, which lead groups of their own; ``fg`` continues
    them, and the run ends with every record ok. The workers used to go on while the program
    stood still. Started as a shell starts a job (see the test of the command)."""
    proc = _start_script(tmp_path, _ITERATED_SLOW_RUN, process_group=0)
    workers: list[psutil.Process] = []
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().decode().strip() == "GOING"
        kids = psutil.Process(proc.pid).children(recursive=True)
        workers = [k for k in kids if os.getpgid(k.pid) == k.pid]  # they lead their groups
        assert len(workers) == 2, kids
        os.killpg(proc.pid, signal.SIGTSTP)

        def stopped(p: psutil.Process) -> bool:
            with _suppress_gone():
                return p.status() == psutil.STATUS_STOPPED
            return False

        deadline = time.monotonic() + 10
        while not (stopped(psutil.Process(proc.pid)) and all(stopped(w) for w in workers)):
            assert time.monotonic() < deadline, [(w.pid, w.status()) for w in workers]
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGCONT)  # fg
        out, err = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 0, err.decode()
        assert "STATUSES ok 30" in out.decode(), out.decode() + err.decode()
    finally:
        for p in (proc, *workers):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
        proc.wait(timeout=DEADLINE)
