"""The ``docker`` driver: one container per task run, through the Docker SDK.

Laid out as Nomad's ``drivers/docker``:

* ``driver``: ``DockerDriver``, the engine client and the container lifecycle
  (start, wait, stop, destroy, recover after a client restart).
* ``config``: the task config (keys, validation) and the container options it
  becomes (name, labels, ports, resources, task directory mounts).
* ``images``: image presence and the bounded pull, with failed pulls remembered.
* ``logs``: the log follower that copies a container's output into the task's
  log files, resuming from a cursor after a client restart.
* ``errors``: how the engine's exceptions are read (not found, refused, the
  explanation users see).

Nothing here imports the Docker SDK at import time: the engine client is created
on first use, so a machine without Docker still starts (fingerprint then says
undetected).
"""

from __future__ import annotations

from corral.client.drivers.docker.config import (
    LABEL_ALLOC_ID,
    LABEL_JOB_NAME,
    LABEL_NODE_ID,
    LABEL_TASK_NAME,
    container_name,
)
from corral.client.drivers.docker.driver import DockerDriver
from corral.client.drivers.docker.images import split_image

__all__ = [
    "LABEL_ALLOC_ID",
    "LABEL_JOB_NAME",
    "LABEL_NODE_ID",
    "LABEL_TASK_NAME",
    "DockerDriver",
    "container_name",
    "split_image",
]
