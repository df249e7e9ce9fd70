"""Profiling, sweeps and evaluation past one process: independent units on a Ray cluster (docs/scale.md).

`backend` connects, refuses what a cluster cannot take, and feeds long-lived workers; `units` is what a worker
computes. The service layer (diet/api.py) builds the units and stores their results under the in-process keys.
"""

from diet.cluster.backend import ClusterProgress, Pool, Timing, Unit, disconnect

__all__ = ["ClusterProgress", "Pool", "Timing", "Unit", "disconnect"]
