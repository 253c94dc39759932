"""Benchmarks (run as scripts: `python bench/<name>.py`); a package so that worker
processes can import `bench.simulated_engine`."""
