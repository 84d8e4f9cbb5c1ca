"""asyncio: `await reaper.arun(...)` and `async with reaper.AsyncJob(...)`.

The same jobs, supervisors and channel as reaper.api; only the waiting
differs: the channel and the pipes are watched with loop.add_reader, so
nothing blocks the event loop and no thread is used.

Cancellation follows trio, not asyncio's subprocess (which abandons the child)
or anyio (which kills only the child): when the task is cancelled, the job is
stopped with its stop ladder and the task waits until the supervisor reports
it collected; only then does CancelledError propagate.  A second cancellation
while that wait runs escalates to SIGKILL and is absorbed: the task still ends
with the job collected and exactly one CancelledError.
"""

from __future__ import annotations

import asyncio
import signal as _signal
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from reaper.api import (Job, ProcessInfo, Result, StrPath, Stream, _IO, _run_streams, _seconds, _signum,
                        _with_output)

__all__ = ["AsyncJob", "arun"]


class AsyncJob:
    """`async with AsyncJob(argv) as job:` -- leaving the block stops and collects the job."""

    def __init__(self, argv: Sequence[StrPath], **options: Any) -> None:
        self._argv = argv
        self._options = options
        self._job: Optional[Job] = None

    # -- waiting ---------------------------------------------------------------------

    async def _until(self, until: str, io: Optional[_IO] = None) -> None:
        """Wait for the channel to say `until`, moving pipe data meanwhile."""
        job = self._require()
        if job._reached(until):
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        chan = job._chan
        watched = []

        def on_channel() -> None:
            chan.on_readable()
            if job._reached(until) and not done.done():
                done.set_result(None)

        def on_pipe(fd: int) -> None:
            assert io is not None
            if not io.on_ready(fd):
                loop.remove_reader(fd) if fd in io.readers else loop.remove_writer(fd)

        loop.add_reader(chan.fileno(), on_channel)
        watched.append(("r", chan.fileno()))
        if io is not None:
            for fd in io.readers:
                loop.add_reader(fd, on_pipe, fd)
                watched.append(("r", fd))
            if io.writer is not None:
                loop.add_writer(io.writer, on_pipe, io.writer)
                watched.append(("w", io.writer))
        try:
            await done
        finally:
            for kind, fd in watched:
                try:
                    loop.remove_reader(fd) if kind == "r" else loop.remove_writer(fd)
                except (ValueError, OSError):
                    pass

    async def _collect(self, first: Optional[str]) -> int:
        """Send `first` ('stop' or None) and wait for the end, however often we are cancelled.

        Returns how many cancellations arrived meanwhile; each one after the
        first request escalates to SIGKILL.
        """
        job = self._require()
        cancels = 0
        if first == "stop":
            job._chan.send({"op": "stop", "signal": job.stop_signal, "grace": job.grace})
        while True:
            try:
                await self._until("end")
                return cancels
            except asyncio.CancelledError:
                cancels += 1
                job._chan.send({"op": "kill"})

    def _require(self) -> Job:
        if self._job is None:
            raise RuntimeError("the job has not been started: use `async with` or `await job.start()`")
        return self._job

    # -- public ----------------------------------------------------------------------

    async def start(self) -> "AsyncJob":
        """Start the job; returns once its main process runs (or raises why it cannot)."""
        if self._job is not None:
            raise RuntimeError("the job was already started")
        self._job = Job(self._argv, **self._options, _await_start=False)
        try:
            await self._until("started")
        except asyncio.CancelledError:
            # Started or not, nothing of it may outlive this task.  The stop
            # request waits in the channel until the supervisor reads it.
            await self._collect("stop")
            self._job._finish()
            raise
        self._job._check_started()
        return self

    async def wait(self) -> Result:
        """Wait until the whole job has ended; cancelling stops it and still waits."""
        job = self._require()
        try:
            await self._until("end")
        except asyncio.CancelledError:
            await self._collect("stop")
            job._finish()
            raise
        return job.wait()

    async def stop(self, grace: Optional[float] = None,
                   signal: Union[int, str, None] = None) -> Result:
        """Stop signal to the whole job, SIGKILL after `grace`; return once collected."""
        job = self._require()
        g = _seconds(grace, "grace")
        sig = job.stop_signal if signal is None else _signum(signal, "signal")
        job._chan.send({"op": "stop", "signal": sig, "grace": job.grace if g is None else g})
        cancels = await self._collect(None)
        if cancels:
            job._finish()
            raise asyncio.CancelledError()
        return job.wait()

    async def kill(self) -> Result:
        job = self._require()
        job._chan.send({"op": "kill"})
        cancels = await self._collect(None)
        if cancels:
            job._finish()
            raise asyncio.CancelledError()
        return job.wait()

    def signal(self, sig: Union[int, str]) -> bool:
        return self._require().signal(sig)

    @property
    def pid(self) -> int:
        return self._require().pid

    @property
    def cgroup(self) -> Optional[str]:
        return self._require().cgroup

    @property
    def result(self) -> Optional[Result]:
        return self._require().result

    def processes(self) -> List[ProcessInfo]:
        return self._require().processes()

    def ports(self) -> List[Dict[str, Any]]:
        return self._require().ports()

    def stats(self) -> Dict[str, Any]:
        return self._require().stats()

    async def aclose(self) -> Result:
        """Stop the job if it still runs and wait until it is collected (cancel-proof)."""
        job = self._require()
        first = None if job._reached("end") else "stop"
        cancels = await self._collect(first)
        try:
            result = job.wait()
        finally:
            for stream in (job.stdin, job.stdout, job.stderr):
                if stream is not None:
                    stream.close()
        if cancels:
            raise asyncio.CancelledError()
        return result

    async def __aenter__(self) -> "AsyncJob":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self.aclose()
        except asyncio.CancelledError:
            if exc[0] is None:
                raise       # otherwise the block's own exception (maybe a CancelledError) wins


async def arun(argv: Sequence[StrPath], *, input: Union[bytes, str, None] = None,
               capture_output: bool = False, check: bool = False, text: bool = False,
               stdin: Stream = None, stdout: Stream = None, stderr: Stream = None,
               timeout: Optional[float] = None, grace: float = 10.0,
               stop_signal: Union[int, str] = _signal.SIGTERM,
               cwd: Optional[StrPath] = None, env: Optional[Mapping[str, str]] = None,
               **options: Any) -> Result:
    """reaper.run() for asyncio; cancelling stops the job and waits until it is collected."""
    stdin, stdout, stderr, data = _run_streams(capture_output, input, stdin, stdout, stderr)
    job = AsyncJob(argv, stdin=stdin, stdout=stdout, stderr=stderr, timeout=timeout, grace=grace,
                   stop_signal=stop_signal, cwd=cwd, env=env, **options)
    out: Optional[bytes] = None
    err: Optional[bytes] = None
    async with job:
        inner = job._require()
        io = inner._io(data)
        try:
            await job._until("end", io)
        except asyncio.CancelledError:
            await job._collect("stop")
            raise
        out, err = io.drain()
    result = _with_output(job._require().wait(), out, err, text)
    if check:
        result.check_returncode()
    return result
