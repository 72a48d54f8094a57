"""`python -m bench` (`make bench`): control-plane and runner media-path benchmarks.

Runs on the local stack (`make stack-up`); writes bench/results/latest.json
and a latency plot beside it, and prints a table. See bench/README.md.
"""
