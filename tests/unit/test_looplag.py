"""The loop-lag gauge (shell/looplag.py): a timer that measures how late the loop runs it."""

from __future__ import annotations

import asyncio
import time

from vswitch.shell.looplag import LoopLag


def test_a_blocked_loop_shows_as_lag_and_an_idle_one_does_not() -> None:
    async def main() -> tuple[dict[str, float], dict[str, float]]:
        lag = LoopLag(asyncio.get_running_loop(), interval=0.01)
        lag.start()
        await asyncio.sleep(0.1)
        idle = lag.snapshot()
        time.sleep(0.05)  # the loop is held: the timer due meanwhile runs about 40 ms late
        await asyncio.sleep(0.03)
        busy = lag.snapshot()
        lag.stop()
        return idle, busy

    idle, busy = asyncio.run(main())
    assert idle["count"] >= 3 and idle["max"] < 0.03
    assert busy["max"] >= 0.03 and busy["recent_max"] == busy["max"]
    assert busy["count"] > idle["count"]


def test_stop_ends_the_timer() -> None:
    async def main() -> int:
        lag = LoopLag(asyncio.get_running_loop(), interval=0.005)
        lag.start()
        await asyncio.sleep(0.03)
        lag.stop()
        count: int = lag.snapshot()["count"]
        await asyncio.sleep(0.03)
        assert lag.snapshot()["count"] == count
        return count

    assert asyncio.run(main()) > 0
