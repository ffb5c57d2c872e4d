"""Concurrency policy: bounded pools that run jobs in threads or supervised child processes.

This layer knows how work is scheduled, never what it is: a job is an opaque picklable
payload handed to a function built once per worker by a picklable factory. Every bounded
place (here and in the layers above) is a :class:`Limiter`.
"""

from offloop.runtime.base import JobFactory, JobFailed, JobFn, Pool, PoolStats, WorkerCrashed
from offloop.runtime.limiter import Limiter, LimiterStats
from offloop.runtime.processpool import ProcessPool
from offloop.runtime.threadpool import ThreadPool

__all__ = [
    "JobFactory",
    "JobFailed",
    "JobFn",
    "Limiter",
    "LimiterStats",
    "Pool",
    "PoolStats",
    "ProcessPool",
    "ThreadPool",
    "WorkerCrashed",
]
