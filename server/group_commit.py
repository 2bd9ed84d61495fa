"""Group commit: concurrent proposals share one raft entry."""

from __future__ import annotations

import threading
from concurrent.futures import Future

from corral.proto import pb
from corral.server.fsm import COMMAND_SCHEMA, ApplyResult
from corral.server.raft import Consensus


class GroupCommit:
    """Concurrent proposals share one raft entry (a ``BatchCommand``).

    A raft entry costs the engine far more than applying a command (pickling,
    encryption, journal, a round of acks); writers that arrive while an entry is
    in flight are committed together in the next one. A lone writer pays nothing
    extra: its command goes out alone, at once.
    """

    MAX_BATCH = 512
    PIPELINE = 2  # entries in flight at once

    def __init__(self, raft: Consensus) -> None:
        import queue

        self._raft = raft
        self._queue: queue.SimpleQueue[tuple[bytes, Future[ApplyResult]] | None] = (
            queue.SimpleQueue()
        )
        self._threads = [
            threading.Thread(target=self._run, name=f"group-commit-{i}", daemon=True)
            for i in range(self.PIPELINE)
        ]
        for t in self._threads:
            t.start()

    def propose(self, data: bytes, timeout: float) -> ApplyResult:
        return self.submit(data).result(timeout=timeout + 5)

    def submit(self, data: bytes) -> Future[ApplyResult]:
        """Queue a command without waiting: commands submitted together by one
        caller share raft entries just as concurrent callers' do."""
        fut: Future[ApplyResult] = Future()
        self._queue.put((data, fut))
        return fut

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)

    def _run(self) -> None:
        import queue

        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            results: list[ApplyResult]
            try:
                if len(batch) == 1:
                    single = self._raft.propose(batch[0][0])
                    results = single if isinstance(single, list) else [single]
                else:
                    entry = pb.Command(
                        schema=COMMAND_SCHEMA,
                        batch=pb.BatchCommand(commands=[d for d, _ in batch]),
                    )
                    out = self._raft.propose(entry.SerializeToString())
                    results = out if isinstance(out, list) else [out]
            except Exception as exc:
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                fut.set_result(result)
