"""Benchmarks that measure edgecut for real; they print ratios and write JSON, never assert timings."""
