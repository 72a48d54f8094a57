"""Renderers turn the agent's speech into avatar frames."""

from __future__ import annotations

from .. import contract
from ..config import RunnerConfig
from .base import Renderer, RendererRefused


async def open_renderer(config: RunnerConfig) -> Renderer:
    """The renderer `config` asks for, ready to render; raises RendererRefused."""
    if config.renderer is contract.Renderer.PORTRAIT:
        from .portrait import load_portrait

        return load_portrait(config.image_file, config.fps)
    # Imported only when chosen: the portrait renderer must work where the
    # bitHuman wheel cannot be installed.
    from .bithuman import open_bithuman

    assert config.bithuman is not None  # parse_config sets it for this renderer
    return await open_bithuman(config.bithuman)


__all__ = ["Renderer", "RendererRefused", "open_renderer"]
