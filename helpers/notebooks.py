"""Run the course's notebooks headless, top to bottom (``scripts/run_course.py``, ``scripts/time_notebooks.py``).

A thin layer over ``nbclient``, with one mend. nbclient waits for a kernel's
messages with one long ``get_msg(timeout=...)`` on a ZeroMQ socket that it also
sends on; after a cell that displays ipywidgets (the client sends widget
messages on that socket) the wake-up is sometimes lost, and the wait lasts the
whole cell timeout although the reply is already there (nbclient issue #312).
On this course's notebooks it happened to one run in four of notebook 5. The
mend: wait in short slices, so a fresh poll sees a message a lost wake-up hid;
the overall timeout is unchanged.
"""
from __future__ import annotations

from pathlib import Path
from queue import Empty
from time import monotonic

#: Longest single wait on a kernel channel (seconds); the cell timeout still bounds the total.
POLL_SLICE = 0.5


def _sliced(get_msg):
    """``get_msg(timeout)`` of a kernel channel, waiting in slices of ``POLL_SLICE`` seconds."""

    async def get_msg_in_slices(timeout: float | None = None):
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            left = POLL_SLICE if deadline is None else max(0.0, min(POLL_SLICE, deadline - monotonic()))
            try:
                return await get_msg(timeout=left)
            except Empty:
                if deadline is not None and monotonic() >= deadline:
                    raise

    return get_msg_in_slices


def notebook_client(notebook, timeout: int, working_dir):
    """An ``nbclient.NotebookClient`` for ``notebook`` run in ``working_dir``, with sliced waits.

    ``timeout`` is the seconds one cell may take (``CellTimeoutError`` after it).
    """
    from nbclient import NotebookClient

    class SlicedWaitClient(NotebookClient):
        async def async_start_new_kernel_client(self):
            client = await super().async_start_new_kernel_client()
            for channel in (client.shell_channel, client.iopub_channel):
                channel.get_msg = _sliced(channel.get_msg)
            return client

    return SlicedWaitClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(Path(working_dir))}})
