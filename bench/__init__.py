"""Benchmarks: safehold against the tools operators would use instead."""
