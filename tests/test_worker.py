"""The MLX worker: one thread runs every job in order, streams results back (to a thread or
an event loop), stops a job at its cancel flag (closing its generator on that thread),
skips a job cancelled while queued, and survives whatever a job raises."""

import asyncio
import threading
import time

from mgm_mlx.worker import Cancelled, Worker

import pytest


def test_worker_runs_jobs_in_order_on_one_thread_and_survives_errors():
    worker = Worker("test")
    threads, order = set(), []

    def job(i):
        threads.add(threading.current_thread().name)
        order.append(i)
        return i * 2

    jobs = [worker.submit(job, i) for i in range(5)]
    assert [j.wait(5) for j in jobs] == [0, 2, 4, 6, 8] and order == list(range(5)) and threads == {"test"}
    failed = worker.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failed.wait(5)
    assert failed.state == "failed" and worker.call(job, 7) == 14  # it goes on

    closed = []

    def tokens():
        try:
            for i in range(1000):
                time.sleep(0.002)
                yield i
        finally:
            closed.append(threading.current_thread().name)  # closed on the worker thread

    streaming = worker.submit(tokens)
    got = []
    for i in streaming:
        got.append(i)
        if i == 3:
            streaming.cancel()
    assert got[:4] == [0, 1, 2, 3] and len(got) < 10 and streaming.state == "cancelled" and closed == ["test"]

    gate = threading.Event()
    blocker = worker.submit(gate.wait, 5)
    queued = worker.submit(job, 99)
    queued.cancel()  # given up while it waits: never runs
    gate.set()
    blocker.wait(5)
    queued.wait(5)
    assert queued.state == "cancelled" and 99 not in order
    worker.close(5)
    assert not worker.thread.is_alive()


def test_worker_hands_results_to_an_event_loop():
    worker = Worker("test-async")

    async def main():
        job = worker.submit(lambda n: (i for i in range(n)), 4, loop=asyncio.get_running_loop())
        got = [i async for i in job]
        failed = worker.submit(lambda: (_ for _ in ()).throw(ValueError("bad")), loop=asyncio.get_running_loop())
        with pytest.raises(ValueError, match="bad"):
            async for _ in failed:
                pass
        return got

    assert asyncio.run(main()) == [0, 1, 2, 3]
    errors = []
    reporting = Worker("test-report", on_error=lambda job, e: errors.append((job.name, str(e))))
    reporting.submit(lambda: 1 / 0, name="divide").finished.wait(5)
    assert errors == [("divide", "division by zero")]
    worker.close(5)
    reporting.close(5)


def test_a_job_stops_itself_where_it_checks_its_cancel_flag():
    worker = Worker("test-check")
    gate, steps = threading.Event(), []

    def picture():
        for step in range(100):
            worker.check_cancelled()  # e.g. a progress callback between steps
            steps.append(step)
            gate.wait(5)

    job = worker.submit(picture)
    while not steps:
        time.sleep(0.01)
    job.cancel()
    gate.set()
    assert job.wait(5) is None and job.state == "cancelled" and len(steps) < 100
    worker.check_cancelled()  # outside a job: nothing to stop
    assert worker.call(lambda: "next") == "next"
    assert str(Cancelled()) == "cancelled"
    worker.close(5)
