"""demo_agent --pace: speech handed over like a streaming TTS, not in one burst."""

from __future__ import annotations

import pytest
from avatar_runner import demo_agent


def test_without_a_pace_everything_goes_at_once() -> None:
    assert demo_agent.send_wait(30.0, 0.0, None) == 0.0


def test_the_head_start_goes_at_once_then_the_pace_holds() -> None:
    assert demo_agent.send_wait(0.5, 0.0, 2.0, head_start_s=1.0) == 0.0
    assert demo_agent.send_wait(1.0, 0.0, 2.0, head_start_s=1.0) == 0.0
    # 3 s of speech sent: 1 s head start + 2 s at twice real time = 1 s after starting.
    assert demo_agent.send_wait(3.0, 0.0, 2.0, head_start_s=1.0) == pytest.approx(1.0)
    assert demo_agent.send_wait(3.0, 0.4, 2.0, head_start_s=1.0) == pytest.approx(0.6)
    assert demo_agent.send_wait(3.0, 2.0, 2.0, head_start_s=1.0) == 0.0  # behind: no wait


def test_a_pace_of_zero_or_less_is_refused() -> None:
    with pytest.raises(SystemExit):
        demo_agent.parse_args(["--url", "ws://x", "--token", "t", "--pace", "0"])
    assert demo_agent.parse_args(["--url", "ws://x", "--token", "t", "--pace", "2"]).pace == 2.0
