"""Defaults and limits shared by the library and the CLI, in a module with no heavy imports.

The CLI declares its options with these at import time; `gymverl.verify` (which imports aiohttp),
`gymverl.collect` and the rest use the same values, so each number has one source.
"""

DEFAULT_CONCURRENCY = 32  # a NeMo Gym resources server (one uvicorn worker) saturates well below this
# Each request in flight costs a task, a queue slot and a socket: far above any useful value, far
# below what exhausts memory or file descriptors (10**20 once took 23 GB before a single request).
MAX_CONCURRENCY = 4096
MAX_RETRIES = 100
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 4
DEFAULT_HEAD_URL = "http://127.0.0.1:11000"  # NeMo Gym's default head server address
