"""The benchmarks: each `NAME.py` here is one, run as `./run bench NAME` (`python -m bench.NAME`);
the `_*.py` modules are what they share."""
