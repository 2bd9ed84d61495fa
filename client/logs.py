"""The client's ClientService: task logs read from the allocation directory.

The servers proxy ``alloc logs`` here, so the CLI needs to reach only a server.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import grpc

from corral.proto import pb, rpc

CHUNK = 64 * 1024


def safe_name(name: str) -> bool:
    """A name that is one harmless path component (allocation IDs, task names)."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\x00" not in name


class ClientLogService(rpc.ClientServiceServicer):
    def __init__(
        self, alloc_root: Callable[[str], str | None], task_names: Callable[[str], list[str]]
    ) -> None:
        self._alloc_root = alloc_root
        self._task_names = task_names

    def Logs(
        self, request: pb.AllocLogsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.LogChunk]:
        root = self._alloc_root(request.alloc_id)
        if root is None:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"allocation {request.alloc_id} is not on this node"
            )
        assert root is not None
        tasks = [t for t in self._task_names(request.alloc_id) if safe_name(t)]
        task = request.task
        if not task:
            if len(tasks) != 1:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"allocation has {len(tasks)} tasks; name one of: {', '.join(sorted(tasks))}",
                )
            task = tasks[0]
        elif task not in tasks:
            # Only the allocation's own tasks: a task name becomes a file name.
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"task {task!r} not found in allocation (tasks: {', '.join(sorted(tasks))})",
            )
        kind = request.type or "stdout"
        if kind not in ("stdout", "stderr"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "log type must be stdout or stderr")
        logs = os.path.realpath(os.path.join(root, "alloc", "logs"))
        path = os.path.realpath(os.path.join(logs, f"{task}.{kind}.0"))
        if os.path.dirname(path) != logs:
            # A symlink planted in the alloc dir must not lead out of it either.
            context.abort(grpc.StatusCode.NOT_FOUND, f"no {kind} log for task {task!r}")
        yield from _read(path, request, context)


def _read(
    path: str, request: pb.AllocLogsRequest, context: grpc.ServicerContext
) -> Iterator[pb.LogChunk]:
    deadline_for_file = time.monotonic() + (3600 * 24 if request.follow else 0)
    while not os.path.exists(path):
        if time.monotonic() >= deadline_for_file or not context.is_active():
            return
        time.sleep(0.2)
    with open(path, "rb") as f:
        if request.origin == "end":
            size = os.fstat(f.fileno()).st_size
            f.seek(max(size - request.offset, 0))
        elif request.offset:
            f.seek(request.offset)
        while context.is_active():
            data = f.read(CHUNK)
            if data:
                yield pb.LogChunk(data=data)
                continue
            if not request.follow:
                return
            time.sleep(0.2)
