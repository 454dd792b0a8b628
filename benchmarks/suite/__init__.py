"""The parts of ``benchmarks/bench_suite.py``: the harness (timed variants, interleaved
rounds, the table), the worker processes, and one module per group of measurements.

Used by ``bench_suite.py`` only: run as a script, it has ``benchmarks/`` first on
``sys.path``, so this package imports as ``suite``; the library never imports it.
Module-level imports are the standard library's only: ``bench_suite.py --worker hf``
imports this package in an interpreter that may have torch and transformers but neither
MXNet nor gluonbert.
"""
