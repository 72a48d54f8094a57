"""The avatar runner: renders a LiveKit agent's speech as a talking avatar.

`python -m avatar_runner` joins one room with the token the operator minted,
takes the agent's audio over the LiveKit Agents avatar protocol, renders it
(bitHuman SDK, or the built-in portrait renderer) and publishes audio and
video on the agent's behalf. Configuration: avatar_runner.config.
"""
