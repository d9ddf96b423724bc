"""Where curate's shards run: in this process, in a pool of local worker processes
(`curate.workers`), or on a Ray cluster (`curate.engine: ray`). Whatever runs them, results
come back in input order, so the merge, and with it every output byte, is the same.

Shards (`plan_shards`): a local uncompressed file larger than `curate.shard_bytes` is cut at
line boundaries by byte range; the cut points and the line number at each are found by one
fast scan for newlines (a few GB/s), which runs ahead of the workers. A `.gz` file cannot be
entered mid-stream and a remote object is streamed whole, so each is one shard.

Local workers are started from a fork server (a clean process that has imported the shard
code once), so nothing of the parent's threads or locks is inherited, and each watches the
curate process that started it and ends with it: a SIGKILL of `refit curate` leaves no
worker behind to write into a folder the next run sweeps.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from pipelines.curate_shard import Shard, ShardResult, ShardWorker, TokenCounter
from pipelines.sources import is_url

_SCAN_CHUNK = 8 << 20


class EngineError(ValueError):
    """curate.engine cannot run (ray not installed, no cluster at the address)."""


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def worker_count(cfg: Any) -> int:
    return usable_cores() if cfg.workers == "auto" else int(cfg.workers)


def plan_shards(files: list[str], sizes: list[int], shard_bytes: int) -> Iterator[Shard]:
    """The shards of every input, in input order."""
    index = 0
    for path, size in zip(files, sizes):
        location = path if is_url(path) else str(Path(path).resolve())
        if is_url(path) or path.endswith(".gz") or size <= shard_bytes:
            yield Shard(index, path, size=size, location=location)
            index += 1
            continue
        for start, end, first_line in _cuts(Path(path), shard_bytes):
            yield Shard(index, path, start, end, first_line, (end if end is not None else size) - start, location)
            index += 1


def _cuts(path: Path, shard_bytes: int) -> Iterator[tuple[int, int | None, int]]:
    """(start, end, lines before start) of each byte range: each ends just after the first
    newline at or past `shard_bytes` from its start; the last runs to the end of the file."""
    start = start_line = pos = lines = 0
    cut_at = shard_bytes
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(_SCAN_CHUNK):
            while cut_at - 1 < pos + len(chunk):
                newline = chunk.find(b"\n", max(cut_at - 1 - pos, 0))
                if newline < 0:
                    cut_at = pos + len(chunk) + 1  # look again from the next chunk
                    break
                end = pos + newline + 1
                end_line = lines + chunk.count(b"\n", 0, newline + 1)
                yield start, end, start_line
                start, start_line, cut_at = end, end_line, end + shard_bytes
            lines += chunk.count(b"\n")
            pos += len(chunk)
    if start < pos:
        yield start, None, start_line


def run_shards(config: Any, tokens: TokenCounter, shards: Iterable[Shard], spool_dir: Path,
               total_bytes: int) -> Iterator[ShardResult]:
    """Each shard's result, in input order."""
    cfg = config.curate
    if cfg.engine == "ray":
        yield from _ray_results(config, tokens, shards)
        return
    workers = worker_count(cfg)
    if workers == 1 or total_bytes <= cfg.shard_bytes:  # one shard's worth: no processes to start
        worker = ShardWorker(config, tokens, spool_dir)
        for shard in shards:
            yield worker.run(shard)
        return
    yield from _pool_results(config, tokens, shards, spool_dir, workers)


# --------------------------------------------------------------------------- local processes

_WORKER: ShardWorker | None = None


def _init_worker(config: Any, tokens_blob: bytes, spool_dir: Path, parent_pid: int) -> None:
    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    threading.Thread(target=_exit_with, args=(parent_pid,), daemon=True, name="exit-with-parent").start()
    _WORKER = ShardWorker(config, pickle.loads(tokens_blob), spool_dir)


def _exit_with(pid: int) -> None:
    """End this worker within a moment of the curate process that started it (killed, even
    by SIGKILL): it must not go on writing into a folder the next run sweeps away."""
    try:
        parent = psutil.Process(pid)
        while parent.is_running() and parent.status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.2)
    except psutil.NoSuchProcess:
        pass
    os.kill(os.getpid(), signal.SIGKILL)


def _run_shard(shard: Shard) -> ShardResult:
    assert _WORKER is not None
    return _WORKER.run(shard)


def _pool_results(config: Any, tokens: TokenCounter, shards: Iterable[Shard], spool_dir: Path,
                  workers: int) -> Iterator[ShardResult]:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["pipelines.curate_shard"])
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                               initargs=(config, pickle.dumps(tokens), spool_dir, os.getpid()))
    try:
        yield from _in_order(lambda shard: pool.submit(_run_shard, shard), shards, 2 * workers)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _in_order(submit: Callable[[Shard], Future], shards: Iterable[Shard], window: int) -> Iterator[ShardResult]:
    """Keep `window` shards in flight; yield their results in submission order."""
    pending: collections.deque[Future] = collections.deque()
    for shard in shards:
        pending.append(submit(shard))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


# --------------------------------------------------------------------------- Ray


class _RayShardActor:
    """One ShardWorker per Ray worker process; results travel back through the object store."""

    def __init__(self, config: Any, tokens_blob: bytes):
        self.worker = ShardWorker(config, pickle.loads(tokens_blob), None)

    def run(self, shard: Shard) -> ShardResult:
        return self.worker.run(shard)


def _ray_results(config: Any, tokens: TokenCounter, shards: Iterable[Shard]) -> Iterator[ShardResult]:
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise EngineError("curate.engine is ray but ray is not installed: pip install 'refit[ray]'") from None
    cfg = config.curate
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    ours = not ray.is_initialized()
    if ours:
        try:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise EngineError(f"curate.ray_address: cannot join the Ray cluster at {address!r}: "
                              f"{str(exc).splitlines()[0]}") from None
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        actors = max(1, cpus if cfg.workers == "auto" else int(cfg.workers))
        blob = ray.put(pickle.dumps(tokens))
        actor = ray.remote(num_cpus=1)(_RayShardActor)
        pool = ActorPool([actor.remote(config, blob) for _ in range(actors)])
        yield from pool.map(lambda a, shard: a.run.remote(shard), shards)
    finally:
        if ours:
            ray.shutdown()
