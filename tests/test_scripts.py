"""run.sh / stop.sh as a user runs them: in a temporary copy of the project, against the simulator
served on 127.0.0.1 (the `sim_server` fixture), with `.venv` pointing at the test interpreter."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from eth_account import Account

from standx_sim.simulate import throwaway_key
from tests.sim_process import REPO, account, clean_env, wait_until

# The scripts, the example settings and every top-level module the daemon may import
# (market_maker.py, standx_auth.py, standx_api.py, ...); not standx_sim (only for --simulate).
PROJECT_FILES = ("run.sh", "stop.sh", ".env.example", "requirements.txt",
                 *sorted(p.name for p in REPO.glob("*.py")))
SCRIPT_TIMEOUT_S = 40  # stop.sh may wait 20 s before SIGKILL; a real stop takes about 1 s


# ---- helpers ---------------------------------------------------------------------------------

def log_text(path: Path) -> str:
    """A daemon's log so far; empty until the daemon has created it (run.sh rotates the old one
    away before the new process starts)."""
    return path.read_text() if path.exists() else ""


def make_project(root: Path, venv: bool = True, files=PROJECT_FILES) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in files:
        shutil.copy2(REPO / name, root / name)
    (root / "logs").mkdir()
    if venv:
        (root / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    return root


def write_env(root: Path, name: str, url: str, key: str | None = None, **settings: str) -> str:
    """.env.NAME for the simulator at `url`; returns the wallet address (lower case)."""
    key = key or throwaway_key()
    lines = {"WALLET_PRIVATE_KEY": key, "STANDX_AUTH_BASE_URL": url, "STANDX_PERPS_BASE_URL": url,
             "MARKET_MAKER_CHECK_INTERVAL": "0.2", **settings}
    path = root / f".env.{name}"
    path.write_text("".join(f"{k}={v}\n" for k, v in lines.items()))
    path.chmod(0o600)
    return Account.from_key(key).address.lower()


def script(root: Path, name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(root / name), *args], cwd=root, env=clean_env(**env),
                          capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S)


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def alive(pid: int) -> bool:
    """Any thread of the process still running. The daemon's parent, run.sh, has exited, so
    init reaps it; until then its main thread shows as a zombie while its other threads are
    still exiting, and only when the last one is gone are its files (its lock) released."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return False
    for task in tasks:
        try:
            if (task / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                return True
        except OSError:
            continue  # that thread has just gone
    return False


def read_pid(root: Path, name: str) -> int:
    return int((root / "logs" / f"{name}.pid").read_text().strip())


def open_orders(url: str, address: str) -> list:
    return account(url, address).get("open_orders", [])


def processes_under(root: Path) -> list[int]:
    """PIDs of the processes whose working directory is `root` (the daemons we started there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")) == root:
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.fixture
def project(tmp_path):
    """A copy of the project; every process left running in it is SIGKILLed afterwards."""
    root = make_project(tmp_path / "mm")
    try:
        yield root
    finally:
        kill_all_under(root)


def kill_all_under(root: Path) -> None:
    for pid in processes_under(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def sigkill_and_wait(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not alive(pid), 5)


# ---- refusals that start nothing -------------------------------------------------------------

def test_without_venv_run_sh_gives_the_one_command_that_fixes_it(tmp_path):
    root = make_project(tmp_path / "novenv", venv=False)
    result = script(root, "run.sh")
    assert result.returncode == 1
    assert "python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt" in output(result)


def test_without_env_file_run_sh_gives_the_one_command_that_fixes_it(project):
    result = script(project, "run.sh", "alice")
    assert result.returncode == 1
    assert "cp .env.example .env.alice && chmod 600 .env.alice" in output(result)
    result = script(project, "run.sh")
    assert result.returncode == 1
    assert "cp .env.example .env && chmod 600 .env" in output(result)
    assert not list((project / "logs").iterdir())


@pytest.mark.parametrize("args", [["a/b"], ["x y"], ["../etc"], ["a.b"], ["-x"], ["é"], ["a", "b"]])
def test_a_bad_name_is_refused_with_one_line(project, args):
    for name in ("run.sh", "stop.sh"):
        result = script(project, name, *args)
        assert result.returncode == 2, output(result)
        assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert not list((project / "logs").iterdir())


def test_a_bad_setting_shows_the_config_error_and_starts_nothing(project, sim_server):
    write_env(project, "bad", sim_server, MARKET_MAKER_QTY="abc")
    # the file is authoritative: a valid value exported in the environment does not mask it
    result = script(project, "run.sh", "bad", MARKET_MAKER_QTY="0.005")
    assert result.returncode == 2, output(result)
    assert "ignoring MARKET_MAKER_QTY from the environment" in result.stdout
    assert re.search(r"configuration error: .*MARKET_MAKER_QTY", result.stderr), output(result)
    logs = project / "logs"
    assert not (logs / "bad.pid").exists() and not (logs / "bad.log").exists()
    assert processes_under(project) == []


def test_a_daemon_that_exits_at_once_is_reported_with_its_last_lines(tmp_path):
    root = make_project(tmp_path / "crash", files=("run.sh", "stop.sh"))
    (root / "market_maker.py").write_text(textwrap.dedent("""\
        import sys
        if "--check-config" in sys.argv:
            print("configuration OK: fake")
            sys.exit(0)
        sys.exit("boom: the fake daemon cannot start")
        """))
    (root / ".env.crash").write_text("")
    try:
        result = script(root, "run.sh", "crash")
        assert result.returncode == 1, output(result)
        assert "exited at once" in result.stderr and "boom: the fake daemon cannot start" in result.stderr
        assert not (root / "logs" / "crash.pid").exists()
    finally:
        kill_all_under(root)


# ---- stop.sh signals only our daemon ---------------------------------------------------------

def test_stop_sh_ignores_a_stale_pid_file_of_an_unrelated_live_process(project):
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        (project / "logs" / "alice.pid").write_text(f"{unrelated.pid}\n")
        result = script(project, "stop.sh", "alice")
        assert result.returncode == 0, output(result)
        assert "Stale" in result.stdout and "signalled nothing" in result.stdout
        assert not (project / "logs" / "alice.pid").exists()
        time.sleep(0.2)
        assert unrelated.poll() is None
        result = script(project, "stop.sh", "alice")
        assert result.returncode == 0 and "Not running" in result.stdout
    finally:
        unrelated.kill()
        unrelated.wait(timeout=5)


def test_stop_sh_never_signals_a_process_that_only_mentions_market_maker(project):
    # Same command line as our daemon, but not holding this NAME's lock: not ours.
    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "market_maker.py",
                              "--env-file", ".env.alice", "--log-file", "logs/alice.log"])
    try:
        (project / "logs" / "alice.pid").write_text(f"{decoy.pid}\n")
        result = script(project, "stop.sh", "alice")
        assert result.returncode == 0 and "signalled nothing" in result.stdout
        time.sleep(0.2)
        assert decoy.poll() is None
    finally:
        decoy.kill()
        decoy.wait(timeout=5)


def test_stop_sh_escalates_to_sigkill_after_the_deadline(tmp_path):
    """With the default name (.env, logs/market_maker.*) and a fake daemon that ignores SIGTERM."""
    root = make_project(tmp_path / "stubborn", files=("run.sh", "stop.sh"))
    (root / "market_maker.py").write_text(textwrap.dedent("""\
        import signal, sys, time
        if "--check-config" in sys.argv:
            print("configuration OK: fake")
            sys.exit(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with open(sys.argv[sys.argv.index("--log-file") + 1], "a") as log:
            log.write("fake daemon: ignoring SIGTERM\\n")
        while True:
            time.sleep(1)
        """))
    (root / ".env").write_text("")
    try:
        result = script(root, "run.sh")
        assert result.returncode == 0, output(result)
        assert "Log: tail -f logs/market_maker.log  Stop: ./stop.sh\n" in result.stdout
        pid = read_pid(root, "market_maker")
        assert wait_until(lambda: "ignoring SIGTERM" in log_text(root / "logs" / "market_maker.log"), 5)
        started = time.monotonic()
        result = script(root, "stop.sh", STOP_TIMEOUT_S="2")
        assert result.returncode == 0, output(result)
        assert time.monotonic() - started >= 2
        assert ("did not stop within 2 s: sending SIGKILL; check the exchange for orders left open"
                in result.stderr), output(result)
        assert "Stopped market_maker" in result.stdout
        assert not alive(pid)
        assert not (root / "logs" / "market_maker.pid").exists()
    finally:
        kill_all_under(root)


# ---- the real daemon against the simulator ----------------------------------------------------

def test_start_refuse_side_by_side_crash_restart_rotate_and_stop(project, sim_server):
    logs = project / "logs"
    alice = write_env(project, "alice", sim_server)
    bob = write_env(project, "bob", sim_server)
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        # a stale PID file pointing at an unrelated process: replaced with a note, process untouched
        (logs / "alice.pid").write_text(f"{unrelated.pid}\n")
        result = script(project, "run.sh", "alice")
        assert result.returncode == 0, output(result)
        assert "replacing stale logs/alice.pid" in result.stdout
        pid_a = read_pid(project, "alice")
        assert pid_a != unrelated.pid and unrelated.poll() is None
        assert (f"Started alice (PID {pid_a}). Log: tail -f logs/alice.log  Stop: ./stop.sh alice"
                in result.stdout)

        # the daemon writes its own log and quotes
        assert wait_until(lambda: "logged in" in log_text(logs / "alice.log"), 15)
        assert wait_until(lambda: len(open_orders(sim_server, alice)) == 2, 15)

        # a second start of the same name is refused, naming the PID
        result = script(project, "run.sh", "alice")
        assert result.returncode == 1
        assert f"Already running: alice (PID {pid_a})" in result.stderr
        assert read_pid(project, "alice") == pid_a and alive(pid_a)

        # another name runs side by side, with its own files
        result = script(project, "run.sh", "bob")
        assert result.returncode == 0, output(result)
        pid_b = read_pid(project, "bob")
        assert wait_until(lambda: len(open_orders(sim_server, bob)) == 2, 15)
        assert wait_until(lambda: "logged in" in log_text(logs / "bob.log"), 5)
        log_a, log_b = (logs / "alice.log").read_text(), (logs / "bob.log").read_text()
        assert alice in log_a.lower() and bob not in log_a.lower()
        assert bob in log_b.lower() and alice not in log_b.lower()

        # bob is SIGKILLed: the PID file is stale, but the kernel released the lock
        sigkill_and_wait(pid_b)
        assert read_pid(project, "bob") == pid_b
        result = script(project, "run.sh", "bob")
        assert result.returncode == 0, output(result)
        assert "replacing stale logs/bob.pid" in result.stdout
        new_pid_b = read_pid(project, "bob")
        assert new_pid_b != pid_b and alive(new_pid_b)
        rotated = [p for p in logs.iterdir() if re.fullmatch(r"bob_\d{8}_\d{6}\.log", p.name)]
        assert len(rotated) == 1 and "logged in" in rotated[0].read_text()
        assert wait_until(lambda: "logged in" in log_text(logs / "bob.log"), 15)
        assert wait_until(lambda: len(open_orders(sim_server, bob)) == 2, 15)

        # clean stops: orders cancelled, PID files removed; the other daemon is not touched
        result = script(project, "stop.sh", "alice")
        assert result.returncode == 0, output(result)
        assert "Stopped alice" in result.stdout and "SIGKILL" not in output(result)
        assert not alive(pid_a) and alive(new_pid_b)
        assert not (logs / "alice.pid").exists()
        assert open_orders(sim_server, alice) == []
        assert len(open_orders(sim_server, bob)) == 2

        result = script(project, "stop.sh", "bob")
        assert result.returncode == 0, output(result)
        assert "Stopped bob" in result.stdout
        assert not alive(new_pid_b) and not (logs / "bob.pid").exists()
        assert open_orders(sim_server, bob) == []
        assert (logs / "alice.out").read_text() == "" and (logs / "bob.out").read_text() == ""
        assert unrelated.poll() is None
    finally:
        unrelated.kill()
        unrelated.wait(timeout=5)
