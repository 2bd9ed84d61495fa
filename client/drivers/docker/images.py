"""Docker images: present locally, or one bounded pull, and failed pulls remembered.

``ImagePuller.ensure`` inspects the image and pulls it once when it is missing.
The SDK's pull has no timeout at all, so the pull is made by hand on the stream:
it fails when the engine reports no progress for the stall timeout (an
unreachable registry) or the whole pull exceeds the pull timeout. A failed pull
of an image is not tried again for ``_PULL_RETRY_AFTER`` seconds (every start of
the task fails at once with the same message instead of waiting again), which is
Nomad's image coordinator in miniature.
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING

from corral.client.drivers.base import DriverError
from corral.client.drivers.docker.errors import is_not_found, short_error

if TYPE_CHECKING:  # pragma: no cover
    import docker

_PULL_RETRY_AFTER = 30.0  # do not re-try a failed pull of the same image sooner


def split_image(image: str) -> tuple[str, str]:
    """``("repo", "tag")`` for a reference; digests stay in the repo part."""
    if "@" in image:
        return image, ""
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1 :]
    return image, "latest"


class ImagePuller:
    """Makes sure an image is present, remembering failed pulls (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pull_failures: dict[str, tuple[float, str]] = {}

    def ensure(
        self, api: docker.APIClient, image: str, *, pull_timeout: float, stall_timeout: float
    ) -> None:
        """The image exists locally, or one bounded pull brings it, or DriverError."""
        try:
            api.inspect_image(image)
            return
        except Exception as exc:
            if not is_not_found(exc):
                raise DriverError(
                    f"cannot inspect image {image}: {short_error(exc)}", recoverable=True
                ) from exc
        with self._lock:
            failed = self._pull_failures.get(image)
        if failed is not None and time.monotonic() - failed[0] < _PULL_RETRY_AFTER:
            raise DriverError(failed[1])
        try:
            pull(api, image, pull_timeout=pull_timeout, stall_timeout=stall_timeout)
            api.inspect_image(image)
        except Exception as exc:
            msg = (
                f"image {image} not found locally and no registry is reachable: "
                f"failed to pull {image}: {short_error(exc)}"
            )
            with self._lock:
                self._pull_failures[image] = (time.monotonic(), msg)
            raise DriverError(msg) from exc


def pull(api: docker.APIClient, image: str, *, pull_timeout: float, stall_timeout: float) -> None:
    """One pull attempt (the SDK's pull has no timeout at all): it fails when the
    engine reports no progress for ``stall_timeout`` seconds (an unreachable
    registry) or the whole pull exceeds ``pull_timeout``."""
    repo, tag = split_image(image)
    params = {"fromImage": repo}
    if tag:
        params["tag"] = tag
    deadline = time.monotonic() + pull_timeout
    resp = api._post(
        api._url("/images/create"),
        params=params,
        stream=True,
        timeout=stall_timeout,
    )
    try:
        api._raise_for_status(resp)
        for line in resp.iter_lines():
            if line:
                msg = json.loads(line)
                if msg.get("error"):
                    raise RuntimeError(msg["error"])
            if time.monotonic() > deadline:
                raise TimeoutError(f"pull took longer than {pull_timeout:.0f}s")
    finally:
        resp.close()
