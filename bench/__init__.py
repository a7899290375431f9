"""The kernel benchmarks: `python -m bench {attention,step,reference,load}` (see __main__.py)."""
