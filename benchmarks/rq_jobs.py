"""The plain-RQ side of the benchmark: a job function the RQ workers can import.

``benchmarks/`` is put on ``PYTHONPATH`` of the worker processes, so RQ finds
this module as ``rq_jobs`` (the job names it as the string ``rq_jobs.noop``).
"""


def noop() -> None:
    """Does nothing, like bridge's built-in ``noop`` handler."""
    return None
