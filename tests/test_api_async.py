"""asyncio: arun and AsyncJob; cancellation collects the whole job before it propagates.

Same set-up as test_api.py: the caller program runs in the test's cgroup, so
survivors are read from the kernel after it exits; "collected before the
cancellation propagated" is checked inside the caller, at the moment it
catches CancelledError, on the host pids the job reported.
"""

import pytest

from test_api import run_caller

pytestmark = pytest.mark.timeout(90)

ASYNC = """
import asyncio
ESCAPE = helper("escape.py", "2", "--ignore-term", "--stay")

async def ready(job):
    while not (await asyncio.get_running_loop().run_in_executor(None, job._require().stdout.readline)).startswith(b"ready"):
        pass
    return [p.pid for p in job.processes()]
"""


def test_arun_captures_and_returns_once_collected(sandbox):
    got = run_caller(sandbox, ASYNC + """
async def main():
    r = await reaper.arun(["sh", "-c", "(setsid sh -c 'trap \\"\\" TERM; exec sleep 300' &); echo out"],
                          capture_output=True, text=True, grace=0.3)
    t = await reaper.arun(["cat"], input=b"x" * 300000, capture_output=True)
    return dict(out=r.stdout, code=r.returncode, n=len(t.stdout))
say(json.dumps(asyncio.run(main())))
""")
    assert got == {"out": "out\n", "code": 0, "n": 300000}
    sandbox.assert_empty()


def test_leaving_async_with_collects_the_job(sandbox):
    got = run_caller(sandbox, ASYNC + """
async def main():
    async with reaper.AsyncJob(ESCAPE, grace=0.3, stdout=reaper.PIPE) as job:
        pids = await ready(job)
    return dict(alive=[alive(p) for p in pids], n=len(pids), signal=job.result.signal)
say(json.dumps(asyncio.run(main())))
""")
    assert got["n"] >= 3 and not any(got["alive"]) and got["signal"] == 15
    sandbox.assert_empty()


@pytest.mark.parametrize("containment", ["cgroup", "pgroup"])
def test_cancelling_the_task_stops_and_collects_before_it_propagates(sandbox, containment):
    got = run_caller(sandbox, ASYNC + f"""
async def main():
    pids = []
    async def body():
        async with reaper.AsyncJob(ESCAPE, grace=0.5, stdout=reaper.PIPE,
                                   containment={containment!r}) as job:
            pids.extend(await ready(job))
            await asyncio.sleep(300)
    task = asyncio.ensure_future(body())
    while not pids:
        await asyncio.sleep(0.01)
    task.cancel()
    try:
        await task
        outcome = "returned"
    except asyncio.CancelledError:
        outcome = "cancelled"
    return dict(outcome=outcome, alive=[alive(p) for p in pids], n=len(pids))
say(json.dumps(asyncio.run(main())))
""")
    assert got["outcome"] == "cancelled"
    assert got["n"] >= 3 and not any(got["alive"]), got
    sandbox.assert_empty()


def test_a_job_cancelled_twice_ends_collected_with_one_cancellation(sandbox):
    got = run_caller(sandbox, ASYNC + """
async def main():
    pids = []
    async def body():
        job = reaper.AsyncJob(ESCAPE, grace=60, stdout=reaper.PIPE)
        await job.start()
        pids.extend(await ready(job))
        await job.wait()
    task = asyncio.ensure_future(body())
    while not pids:
        await asyncio.sleep(0.01)
    t0 = time.monotonic()
    task.cancel()                 # TERM: ignored by the daemons, grace 60 s
    await asyncio.sleep(0.2)
    task.cancel()                 # the second one kills at once
    errors = []
    try:
        await task
    except asyncio.CancelledError as e:
        errors.append(type(e).__name__)
    return dict(errors=errors, alive=[alive(p) for p in pids], elapsed=time.monotonic() - t0)
say(json.dumps(asyncio.run(main())))
""")
    assert got["errors"] == ["CancelledError"]
    assert not any(got["alive"])
    assert got["elapsed"] < 30      # not the 60 s grace
    sandbox.assert_empty()


def test_cancelled_arun_with_a_timeout_wrapper(sandbox):
    got = run_caller(sandbox, ASYNC + """
async def main():
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(reaper.arun(ESCAPE, grace=0.3, stdout=reaper.DEVNULL), 1.0)
    except asyncio.TimeoutError:
        pass
    return dict(elapsed=time.monotonic() - t0)
say(json.dumps(asyncio.run(main())))
""")
    assert got["elapsed"] < 20
    sandbox.assert_empty()      # the caller has exited: the kernel says nothing is left
