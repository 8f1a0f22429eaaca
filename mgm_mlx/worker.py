"""One thread for every MLX call: a queue of jobs served, in order, by one long-lived thread.

MLX streams are thread-local (MLX >= 0.31.2): the model must be loaded, and every array
operation on it run, on the same thread; a new thread per request breaks on the Mac GPU. So
a front-end (the server, the chat app) starts one Worker, loads the model through it and
submits every turn to it:

    worker = Worker()
    model, processor = worker.call(mgm_mlx.load, "mgm-2b-4bit")  # waits; raises what load raised
    job = worker.submit(reply, session, turns)                    # returns at once
    for piece in job: ...                                         # or `async for` (loop=...)
    job.cancel()                                                  # from any thread

A job is a function called on the worker thread. When it returns a generator, the worker
iterates it, hands each item back as soon as it comes, and checks the job's cancel flag
between items: a cancelled job's generator is closed (its finally blocks run, e.g. the
Session records what its KV cache holds) and the worker moves on. A job cancelled while it
still waits in the queue never starts. Items and the job's end (or its exception) come back
through a thread-safe queue (iterate the job), or, for asyncio code, through the event loop
the job was submitted with (`async for`). Inside a job, `worker.check_cancelled()` (e.g.
from a progress callback, between the steps of a prefill or a picture) raises Cancelled when
the job was cancelled: the job then ends as cancelled, not failed.
"""

import asyncio
import inspect
import queue
import threading

_ITEM, _ERROR, _END = "item", "error", "end"


class Cancelled(Exception):
    """Raised inside a job to stop it where it is; the job ends as cancelled (not an error)."""

    def __str__(self):
        return "cancelled"


class Job:
    """One submitted call: its results as they come, its end, and a cancel flag."""

    def __init__(self, fn, args: tuple, kwargs: dict, name: str, loop: asyncio.AbstractEventLoop | None):
        self.fn, self.args, self.kwargs, self.name = fn, args, kwargs, name
        self.value = None  # what a function that is not a generator returned
        self.error: BaseException | None = None
        self.state = "queued"  # -> "running" -> "done", "failed" or "cancelled"
        self.finished = threading.Event()
        self._cancel = threading.Event()
        self._loop = loop
        self._queue = asyncio.Queue() if loop is not None else queue.Queue()

    def cancel(self):
        """Stop the job at its next item (or keep it from starting); safe from any thread."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    # ---- the worker's side

    def _put(self, kind, value=None):
        if self._loop is None:
            self._queue.put((kind, value))
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancel()

    # ---- the caller's side

    def __iter__(self):
        if self._loop is not None:
            raise TypeError("this job was submitted with an event loop: use `async for`")
        while True:
            kind, value = self._queue.get()
            if kind == _ITEM:
                yield value
            elif kind == _ERROR:
                raise value
            else:
                return

    def __aiter__(self):
        if self._loop is None:
            raise TypeError("this job was submitted without an event loop: use `for`")
        return self

    async def __anext__(self):
        kind, value = await self._queue.get()
        if kind == _ITEM:
            return value
        if kind == _ERROR:
            raise value
        self._queue.put_nowait((kind, value))  # the end stays the end for a later call
        raise StopAsyncIteration

    def wait(self, timeout: float | None = None):
        """Block until the job ended; return its value or raise its exception."""
        if not self.finished.wait(timeout):
            raise TimeoutError(f"the {self.name} job did not finish in {timeout} s")
        if self.error is not None:
            raise self.error
        return self.value


class Worker:
    """A daemon thread that runs submitted jobs one after the other, in order."""

    def __init__(self, name: str = "mlx-worker", on_error=None):
        """on_error(job, exception), if given, is also called (on the worker thread) for
        every job that fails: for front-ends that fire jobs and never read them back."""
        self.on_error = on_error
        self.current: Job | None = None  # the job running now
        self._jobs = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn, *args, name: str | None = None, loop: asyncio.AbstractEventLoop | None = None,
               **kwargs) -> Job:
        """Queue fn(*args, **kwargs) for the worker thread. loop: hand results to this
        asyncio event loop (iterate with `async for`) instead of a thread-safe queue."""
        job = Job(fn, args, kwargs, name or getattr(fn, "__name__", "job"), loop)
        self._jobs.put(job)
        return job

    def call(self, fn, *args, **kwargs):
        """Run fn on the worker thread and wait for its value (or its exception)."""
        return self.submit(fn, *args, **kwargs).wait()

    def check_cancelled(self):
        """From inside a job: raise Cancelled if the running job was cancelled."""
        job = self.current
        if job is not None and job.cancelled and threading.current_thread() is self._thread:
            raise Cancelled()

    @property
    def pending(self) -> int:
        """Jobs waiting in the queue (the running one not counted)."""
        return self._jobs.qsize()

    @property
    def thread(self) -> threading.Thread:
        return self._thread

    def close(self, timeout: float | None = None):
        """Let the jobs queued so far run, then end the thread."""
        self._jobs.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self):
        while (job := self._jobs.get()) is not None:
            if job.cancelled:  # given up while it waited
                self._finish(job, "cancelled")
                continue
            self.current, job.state = job, "running"
            try:
                result = job.fn(*job.args, **job.kwargs)
                if inspect.isgenerator(result):
                    try:
                        for item in result:
                            job._put(_ITEM, item)
                            if job.cancelled:
                                break
                    finally:
                        result.close()  # now, on this thread: its finally blocks run here
                else:
                    job.value = result
            except Cancelled:
                self._finish(job, "cancelled")
            except BaseException as e:  # the worker keeps serving whatever a job raised
                job.error = e
                job._put(_ERROR, e)
                self._finish(job, "failed")
                if self.on_error is not None:
                    try:
                        self.on_error(job, e)
                    except Exception:
                        pass
            else:
                self._finish(job, "cancelled" if job.cancelled else "done")
            finally:
                self.current = None

    @staticmethod
    def _finish(job: Job, state: str):
        job.state = state
        job._put(_END)
        job.finished.set()
