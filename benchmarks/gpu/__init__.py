"""The GPU run kit: the engine's GPU measurements in one short script, for the rare, minutes-long GPU lease.

See ``benchmarks/gpu/run.sh`` (the entry point) and ``benchmarks/gpu/kit.py`` (the measurements).
"""
