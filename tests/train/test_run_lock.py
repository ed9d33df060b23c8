"""A run's guards: one ``rpo-train`` per out_dir (a second exits 2 with one line naming the holder; a dead holder's
lock is taken over; racing processes never both win), a full disk while checkpointing or logging (exit 2, one line
naming the file and the last complete checkpoint, which stays loadable), and Ctrl-C / SIGTERM (a checkpoint at the
next step boundary, the resume line, exit 130 / 143; a second Ctrl-C stops at once)."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rpo_train.cli import main
from rpo_train.runtime.errors import WriteFailedError
from rpo_train.runtime.run_lock import LOCK_NAME, OutDirInUseError, RunLock
from rpo_train.task.tokenizer import make_tiny_checkpoint
from tests.helpers.train_configs import small_recipe

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """The smallest run of tests/train/test_cli_errors.py, 20 steps and no periodic checkpoint."""
    base = tmp_path_factory.mktemp("guards")
    ckpt = make_tiny_checkpoint(base / "tiny", hidden=32, max_positions=96)
    path = base / "small.yaml"
    small_recipe(path, ckpt, steps=20, eval_every=1000, save_every=1000)
    return path


def command(recipe: Path, out: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "rpo_train.cli", "--recipe", str(recipe), f"out_dir={out}", *overrides]


def start(cmd: list[str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def wait_for(ready, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"exited with {proc.returncode}: {proc.stderr.read()[-3000:]}"
        assert time.time() < deadline, "timed out"
        time.sleep(0.01)


def holder(out: Path) -> dict:
    try:
        return json.loads((out / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return {}


def logged_steps(out: Path) -> list[int]:
    path = out / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.is_file() else []


def message_lines(err: str) -> list[str]:
    """The ``rpo-train: ...`` lines of stderr that are not the progress bar's."""
    return [line for line in err.splitlines() if line.startswith("rpo-train: ") and "%|" not in line]


def latest(out: Path) -> int:
    return json.loads((out / "checkpoints" / "latest.json").read_text())["step"]


def test_a_second_run_exits_2_and_a_dead_holder_is_taken_over(recipe, tmp_path, capsys):
    out = tmp_path / "run"
    first = start(command(recipe, out, "steps=1000"))
    try:
        wait_for(lambda: holder(out).get("pid") == first.pid, first)
        os.kill(first.pid, signal.SIGSTOP)  # holds the lock while the second run tries
        second = subprocess.run(command(recipe, out), capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert second.returncode == 2
        assert second.stderr.count("\n") == 1, second.stderr
        assert second.stderr.startswith(f"rpo-train: out_dir {out} is in use by another rpo-train run (pid "
                                        f"{first.pid} on {socket.gethostname()}, started "), second.stderr
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.communicate(timeout=60)
    assert holder(out)["pid"] == first.pid  # left behind by kill -9: stale, and taken over
    assert main(["--recipe", str(recipe), f"out_dir={out}", "steps=1"]) == 0
    assert not (out / LOCK_NAME).exists() and logged_steps(out) == [0, 1]
    assert message_lines(capsys.readouterr().err) == []


def test_a_stale_lock_file_with_a_dead_pid_is_taken_over(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    lock = RunLock(tmp_path / "run")
    lock.path.parent.mkdir()
    lock.path.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "started": "earlier"}))
    assert lock.acquire()
    assert holder(lock.out_dir)["pid"] == os.getpid()
    with pytest.raises(OutDirInUseError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
        RunLock(lock.out_dir).acquire()  # another open file of this process: refused like another process
    lock.release()
    assert not lock.path.exists()
    assert RunLock(lock.out_dir).acquire()


def _race(out: Path, barrier, results) -> None:
    lock = RunLock(out)
    barrier.wait()
    try:
        results.put(("won", lock.acquire()))
        time.sleep(1.5)
        lock.release()
    except OutDirInUseError as exc:
        results.put(("lost", str(exc)))


def test_racing_processes_never_both_win(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for round_ in range(3):
        out = tmp_path / f"race{round_}"
        barrier, results = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_race, args=(out, barrier, results)) for _ in range(6)]
        for p in procs:
            p.start()
        found = [results.get(timeout=60) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert sorted(kind for kind, _ in found) == ["lost"] * 5 + ["won"]
        assert all("is in use by another rpo-train run (pid " in msg for kind, msg in found if kind == "lost")
        assert not (out / LOCK_NAME).exists()


def test_no_file_locks_runs_unguarded_with_a_note(tmp_path, monkeypatch, capsys):
    from rpo_train.runtime import run_lock

    def refuse(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(run_lock.fcntl, "flock", refuse)
    assert RunLock(tmp_path).acquire() is False
    assert capsys.readouterr().err.startswith(f"rpo-train: note: {tmp_path} has no file locks")


def test_a_full_disk_during_a_checkpoint_keeps_the_last_one(recipe, tmp_path, capsys, monkeypatch):
    from rpo_train.runtime import checkpointing

    real, calls = checkpointing.save_file, []

    def second_fails(tensors, path, *args, **kwargs):
        if path.endswith("optimizer.safetensors"):
            calls.append(path)
            if len(calls) == 2:
                with open(path, "wb") as f:  # a partial file, as a full disk leaves
                    f.write(b"\0" * 64)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpointing, "save_file", second_fails)
    out = tmp_path / "run"
    argv = ["--recipe", str(recipe), f"out_dir={out}", "steps=3", "save_every=1"]
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    (line,) = message_lines(err)
    ckpts = out / "checkpoints"
    assert line == (f"rpo-train: cannot write {ckpts / 'step-000002' / 'optimizer.safetensors'}: No space left on "
                    f"device (ENOSPC); the last complete checkpoint is {ckpts / 'step-000001'}: free some space, then "
                    "run the same command again to resume from it")
    assert err.rstrip().endswith(line) and "Traceback" not in err
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest.json", "step-000001"]  # no partial folder
    assert latest(out) == 1 and not (out / LOCK_NAME).exists()
    monkeypatch.undo()
    assert main(argv) == 0  # resumes from the kept checkpoint
    assert latest(out) == 3 and logged_steps(out) == [0, 1, 2, 3]


def test_write_errors_name_the_file(tmp_path, monkeypatch):
    """A metrics row that cannot be written, and safetensors' own report of a full disk (not an OSError)."""
    from safetensors import SafetensorError

    from rpo_train.runtime import metrics
    from rpo_train.runtime.atomic import atomic_directory

    logger = metrics.MetricsLogger(tmp_path)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(metrics.os, "fsync", full)
    with pytest.raises(WriteFailedError, match=f"cannot write {tmp_path / 'metrics.jsonl'}: No space left"):
        logger.log(1, {"x": 1.0})
    monkeypatch.undo()

    def build(tmp: Path) -> None:
        raise SafetensorError("Error while serializing: I/O error: Disk quota exceeded (os error 122)")

    with pytest.raises(WriteFailedError) as caught:
        atomic_directory(tmp_path / "folder", build)
    assert caught.value.errno == errno.EDQUOT and caught.value.remedy == "free some space"
    assert str(caught.value) == f"cannot write {tmp_path / 'folder'}: Disk quota exceeded (EDQUOT)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]

    def bug(tmp: Path) -> None:
        raise ValueError("not a write error")

    with pytest.raises(ValueError, match="not a write error"):  # anything else is untouched
        atomic_directory(tmp_path / "folder", bug)


def test_sigterm_checkpoints_at_a_step_boundary_and_the_run_resumes(recipe, tmp_path):
    out = tmp_path / "run"
    cmd = command(recipe, out)
    proc = start(cmd)
    wait_for(lambda: max(logged_steps(out), default=0) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    step = latest(out)
    assert 2 <= step < 20 and max(logged_steps(out)) == step  # the step the run stopped at, checkpointed
    assert message_lines(err) == [
        "rpo-train: SIGTERM received: stopping after this step with a checkpoint (a second signal stops at once)",
        f"rpo-train: stopped by SIGTERM at step {step} of 20; the last complete checkpoint is "
        f"{out / 'checkpoints' / f'step-{step:06d}'}: run the same command again to resume from it"]
    assert err.rstrip().endswith(message_lines(err)[-1]) and "Traceback" not in err
    assert not (out / LOCK_NAME).exists()
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert logged_steps(out) == list(range(21)) and latest(out) == 20
    assert json.loads((out / "summary.json").read_text())["steps"] == 20


def test_a_second_ctrl_c_stops_at_once(recipe, tmp_path, capfd, monkeypatch):
    """Ctrl-C twice inside step 3 (the handler runs between the two): KeyboardInterrupt there, exit 130, one line;
    the checkpoint of step 2 stays and the run resumes from it."""
    from rpo_train.trainer import Trainer

    real = Trainer.train_step

    def interrupted(self):
        if self.run.step == 2:
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs before the next line
            os.kill(os.getpid(), signal.SIGINT)
        return real(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    out = tmp_path / "run"
    argv = ["--recipe", str(recipe), f"out_dir={out}", "steps=4", "save_every=1"]
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    assert main(argv) == 130
    err = capfd.readouterr().err
    ckpt = out / "checkpoints" / "step-000002"
    assert message_lines(err) == [
        "rpo-train: SIGINT received: stopping after this step with a checkpoint (Ctrl-C stops at once)",
        f"rpo-train: stopped at once by a second SIGINT; the last complete checkpoint is {ckpt}: run the same "
        "command again to resume from it"]
    assert "Traceback" not in err and latest(out) == 2 and not (out / LOCK_NAME).exists()
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers
    monkeypatch.undo()
    assert main(argv) == 0 and logged_steps(out) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("save_every", [1, 1000])
def test_stop_checkpoints_a_step_once(recipe, tmp_path, monkeypatch, save_every):
    """``Trainer(stop=...)``: asked before the first evaluation (nothing to save yet) and before each step; a step
    checkpointed already is not written again."""
    from rpo_train.config import load_recipe
    from rpo_train.trainer import Trainer

    cfg = load_recipe(str(recipe), [f"out_dir={tmp_path}", "steps=3", f"save_every={save_every}"])
    assert Trainer(cfg, stop=lambda: True).train() == {"stopped_at": 0}
    assert not (tmp_path / "checkpoints").exists()
    saves, answers = [], iter([False, False, False, True])
    real = Trainer.save
    monkeypatch.setattr(Trainer, "save", lambda self: saves.append(self.run.step) or real(self))
    assert Trainer(cfg, stop=lambda: next(answers)).train() == {"stopped_at": 2}
    assert saves == ([1, 2] if save_every == 1 else [2]) and latest(tmp_path) == 2


def test_handlers_are_installed_only_in_the_main_thread():
    from rpo_train.runtime.interrupt import StopSignals

    before = signal.getsignal(signal.SIGINT)
    seen = []

    def body():
        with StopSignals().handling() as stop:
            seen.append((signal.getsignal(signal.SIGINT), stop.requested()))

    worker = threading.Thread(target=body)
    worker.start()
    worker.join()
    assert seen == [(before, False)]
    stop = StopSignals(announce=False)
    with stop.handling():
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested() and stop.exit_code() == 143
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) is before
