"""The runner's copy of livekit-agents' private AvatarRunner._publish_track.

`avatar_runner.publishing.AvatarPublisher` overrides that private method to
publish the video with options of its own. A private method can change in
any release, so pyproject.toml caps livekit-agents below the next minor and
these tests fail as soon as the installed method no longer is the one we
copied: then re-copy it (keeping our video options) and move the cap.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from typing import Any

import pytest
from avatar_runner.publishing import AvatarPublisher, video_publishing
from livekit import rtc
from livekit.agents.voice.avatar import AvatarRunner
from livekit.rtc._proto import room_pb2

# The one intended difference: upstream publishes the video with default
# options, we with our own.
UPSTREAM_VIDEO_OPTIONS = "video_options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA)"
OUR_VIDEO_OPTIONS = "video_options = self._publishing.options()"


def _function(method: Any) -> ast.AsyncFunctionDef:
    tree = ast.parse(textwrap.dedent(inspect.getsource(method)))
    (node,) = tree.body
    assert isinstance(node, ast.AsyncFunctionDef)
    return node


def _statement(source: str) -> ast.stmt:
    (node,) = ast.parse(source).body
    return node


class _Replace(ast.NodeTransformer):
    """Replaces every statement equal to `old` with `new`, counting them."""

    def __init__(self, old: ast.stmt, new: ast.stmt) -> None:
        self.old, self.new, self.count = ast.dump(old), new, 0

    def visit(self, node: ast.AST) -> Any:
        if isinstance(node, ast.stmt) and ast.dump(node) == self.old:
            self.count += 1
            return self.new
        return super().visit(node)


def test_our_publish_track_is_upstreams_but_for_the_video_options() -> None:
    upstream = _function(AvatarRunner._publish_track)
    ours = _function(AvatarPublisher._publish_track)
    replace = _Replace(_statement(UPSTREAM_VIDEO_OPTIONS), _statement(OUR_VIDEO_OPTIONS))
    normalised = replace.visit(upstream)
    assert replace.count == 1, (
        f"upstream no longer has exactly one `{UPSTREAM_VIDEO_OPTIONS}`:\n{ast.unparse(upstream)}"
    )
    # ast.dump leaves out line numbers and comments: what is compared is the code.
    assert ast.dump(normalised) == ast.dump(ours), (
        "livekit-agents' AvatarRunner._publish_track changed; re-copy it into "
        f"avatar_runner/publishing.py. Upstream now (normalised):\n{ast.unparse(normalised)}"
    )


def test_the_comparison_sees_a_change() -> None:
    """The test above is not vacuous: one changed call in upstream fails it."""
    upstream = _function(AvatarRunner._publish_track)
    source = ast.unparse(upstream).replace("wait_for_subscription()", "wait_for_subscription(timeout=1)")
    changed = ast.parse(source).body[0]
    replace = _Replace(_statement(UPSTREAM_VIDEO_OPTIONS), _statement(OUR_VIDEO_OPTIONS))
    assert ast.dump(replace.visit(changed)) != ast.dump(_function(AvatarPublisher._publish_track))


def test_upstream_still_calls_the_overridden_method_and_has_no_publishing_of_its_own() -> None:
    source = inspect.getsource(AvatarRunner)
    # Our override is dead code if AvatarRunner stops calling it ...
    assert source.count("await self._publish_track()") >= 1
    # ... and would clobber an attribute of AvatarRunner's own by this name.
    assert "_publishing" not in source
    assert "_publishing" not in vars(AvatarRunner)


@pytest.mark.parametrize(("width", "height", "fps"), [(512, 512, 25.0), (1280, 720, 30.0)])
def test_video_options_keep_the_frame_rate(width: int, height: int, fps: float) -> None:
    # The public enum (livekit >= 1.1.13) and the private protobuf one it
    # wraps must still agree: the options carry the protobuf's value.
    maintain = room_pb2.DegradationPreference.DEGRADATION_PREFERENCE_MAINTAIN_FRAMERATE
    assert rtc.DegradationPreference.MAINTAIN_FRAMERATE.value == maintain
    options = video_publishing(width, height, fps).options()
    assert options.degradation_preference == maintain
    assert options.source == rtc.TrackSource.SOURCE_CAMERA
    assert options.video_encoding.max_framerate == fps
    assert rtc.TrackPublishOptions.FromString(options.SerializeToString()) == options
