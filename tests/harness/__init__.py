"""The harness the test suites and the benchmarks share.

- `polling.wait_until`: wait until a check holds, within a time bound;
- `stack`: the local stack's handles (`Stack`, read from `.stack/env`);
- `operator_process`: `avatar-operator run` as a subprocess;
- `net`: free ports and the runner's HTTP endpoints;
- `viewer`: a LiveKit participant that watches and listens to the avatar.

Nothing here imports pytest: `python -m bench` imports it too.
"""
