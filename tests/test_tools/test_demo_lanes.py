"""``tools/demo.py --jobs``: runs side by side, measurements alone."""

import os
import os.path as osp
import sys
import threading
import time

import pytest

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _demo_part(name: str):
    """``tools/gpusq_demo/<name>.py`` (tools/ is not a package)."""
    import importlib

    sys.path.insert(0, osp.join(REPO_ROOT, 'tools'))
    try:
        return importlib.import_module(f'gpusq_demo.{name}')
    finally:
        sys.path.pop(0)


@pytest.fixture
def runs_mod():
    runs = _demo_part('runs')
    yield runs
    runs.set_jobs(1)


def _lanes(jobs, cpus):
    return _demo_part('lanes').Lanes(jobs, cpus)


def test_threads_are_the_share_of_the_cores():
    lanes = _lanes(2, 2)
    assert lanes.threads(1) == 1 and lanes.threads(2) == 2
    assert _lanes(2, 8).threads(1) == 4
    assert _lanes(4, 2).threads(1) == 1  # never 0
    with pytest.raises(ValueError, match='--jobs'):
        _lanes(0, 2)


def test_slots_limit_priority_and_exclusive():
    """At most ``jobs`` holders at once; a waiting lower number goes
    first; ``exclusive`` runs with nothing else."""
    lanes = _lanes(2, 2)
    lock = threading.Lock()
    active, peak, order, during_exclusive = [0], [0], [], []

    def hold(name, priority, width=1, seconds=0.15):
        with lanes.slot(priority, width):
            with lock:
                active[0] += width
                peak[0] = max(peak[0], active[0])
                order.append(name)
            time.sleep(seconds)
            with lock:
                active[0] -= width

    def alone():
        with lanes.exclusive():
            with lock:
                during_exclusive.append(active[0])
                order.append('exclusive')

    # the wide run holds both slots; the rest queue behind it
    first = threading.Thread(target=hold, args=('wide', 0, 2, 0.4))
    first.start()
    time.sleep(0.1)
    threads = [
        threading.Thread(target=alone),
        threading.Thread(target=hold, args=('late', 2)),
        threading.Thread(target=hold, args=('teacher', 0)),
    ]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in [first] + threads:
        t.join(10)
    assert peak[0] == 2
    # priority 0, then 2, then the exclusive measurement (9) last
    assert order == ['wide', 'teacher', 'late', 'exclusive']
    assert during_exclusive == [0]


def test_run_gives_each_subprocess_its_share(tmp_path, runs_mod):
    """With 2 slots on 2 cores, a run gets 1 thread, a 2-wide run 2."""
    runs_mod.set_jobs(2)
    runs_mod.LANES.cpus = 2
    cmd = [
        sys.executable,
        '-c',
        'import os; print("threads", os.environ["OMP_NUM_THREADS"], '
        'os.environ["MKL_NUM_THREADS"])',
    ]
    (tmp_path / 'task').mkdir()
    one, two = tmp_path / 'task' / 'one.log', tmp_path / 'task' / 'two.log'
    runs_mod.run(cmd, str(one))
    runs_mod.run(cmd, str(two), width=2)
    assert 'threads 1 1' in one.read_text()
    assert 'threads 2 2' in two.read_text()


def test_one_job_leaves_the_threads_alone(tmp_path, runs_mod, monkeypatch):
    monkeypatch.setenv('OMP_NUM_THREADS', '7')
    runs_mod.set_jobs(1)
    log = tmp_path / 'x' / 'run.log'
    log.parent.mkdir()
    cmd = [
        sys.executable,
        '-c',
        'import os; print("threads", os.environ["OMP_NUM_THREADS"])',
    ]
    runs_mod.run(cmd, str(log))
    assert 'threads 7' in log.read_text()


def _run_in_thread(runs_mod, cmd, log):
    """Start ``runs_mod.run(cmd, log)`` in a thread; its RuntimeError
    messages go to the returned list."""
    errors = []

    def target():
        try:
            runs_mod.run(cmd, str(log))
        except RuntimeError as e:
            errors.append(str(e))

    t = threading.Thread(target=target)
    t.start()
    return t, errors


def test_a_failed_run_stops_the_others(tmp_path, runs_mod):
    """After abort_runs() a running subprocess is killed and a new one is
    refused, each with a message that says why."""
    runs_mod.set_jobs(2)
    (tmp_path / 't').mkdir()
    slow = [
        sys.executable,
        '-c',
        'import time\nfor i in range(200):\n'
        '    print(i, flush=True); time.sleep(0.05)',
    ]
    t0 = time.time()
    t, errors = _run_in_thread(runs_mod, slow, tmp_path / 't' / 'slow.log')
    time.sleep(1.0)
    runs_mod.abort_runs()
    t.join(20)
    assert time.time() - t0 < 8  # killed, not run to its end (10 s)
    assert errors and 'another run failed' in errors[0]
    with pytest.raises(RuntimeError, match='not started'):
        runs_mod.run(slow, str(tmp_path / 't' / 'new.log'))
    # a new demo run (set_jobs) starts clean
    runs_mod.set_jobs(1)
    runs_mod.run(
        [sys.executable, '-c', 'print("ok")'], str(tmp_path / 't' / 'ok.log')
    )


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as dead)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False


def test_abort_kills_a_silent_run_and_its_children(tmp_path, runs_mod):
    """A run that prints nothing (and has a child, as a dataloader worker
    would) is killed at once by abort_runs(), child included."""
    runs_mod.set_jobs(2)
    (tmp_path / 't').mkdir()
    pid_file = tmp_path / 'child.pid'
    silent = [
        sys.executable,
        '-c',
        'import subprocess, sys, time\n'
        'c = subprocess.Popen([sys.executable, "-c", '
        '"import time; time.sleep(60)"])\n'
        f'open({str(pid_file)!r}, "w").write(str(c.pid))\n'
        'time.sleep(60)',
    ]
    t, errors = _run_in_thread(runs_mod, silent, tmp_path / 't' / 'silent.log')
    deadline = time.time() + 20
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() < deadline, 'the run did not start'
        time.sleep(0.05)
    child = int(pid_file.read_text())
    t0 = time.time()
    runs_mod.abort_runs()
    t.join(10)
    assert not t.is_alive() and time.time() - t0 < 5
    assert errors and 'another run failed' in errors[0]
    while time.time() - t0 < 5:  # the child goes with its group
        if not _alive(child):
            break
        time.sleep(0.05)
    else:
        os.kill(child, 9)
        raise AssertionError('the run was killed but its child survived')
    runs_mod.set_jobs(1)
