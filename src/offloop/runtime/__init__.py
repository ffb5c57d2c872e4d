"""Concurrency policy: bounded pools that run jobs in threads or supervised child processes.

This layer knows how work is scheduled, never what it is: a job is an opaque picklable
payload handed to a function built once per worker by a picklable factory.
"""

from offloop.runtime.base import JobFactory, JobFn, Pool, PoolStats, WorkerCrashed
from offloop.runtime.processpool import ProcessPool
from offloop.runtime.threadpool import ThreadPool

__all__ = [
    "JobFactory",
    "JobFn",
    "Pool",
    "PoolStats",
    "ProcessPool",
    "ThreadPool",
    "WorkerCrashed",
]
