"""helpers.notebooks: the headless runner waits in short slices, never longer than its timeout."""
import asyncio
import time
from queue import Empty

import pytest

from helpers import notebooks


def fake_channel(empties: int):
    """A channel whose first ``empties`` waits find nothing (a lost wake-up), then a message."""
    calls = []

    async def get_msg(timeout=None):
        calls.append(timeout)
        if len(calls) <= empties:
            raise Empty
        return {"msg_type": "execute_reply"}

    return get_msg, calls


def test_a_missed_wake_up_costs_one_slice_not_the_whole_timeout():
    get_msg, calls = fake_channel(empties=2)
    message = asyncio.run(notebooks._sliced(get_msg)(timeout=3600))
    assert message == {"msg_type": "execute_reply"}
    assert len(calls) == 3
    assert all(t <= notebooks.POLL_SLICE for t in calls)


def test_without_a_timeout_it_keeps_waiting_in_slices():
    get_msg, calls = fake_channel(empties=4)
    assert asyncio.run(notebooks._sliced(get_msg)(timeout=None))["msg_type"] == "execute_reply"
    assert calls == [notebooks.POLL_SLICE] * 5


def test_the_overall_timeout_still_ends_the_wait():
    async def never(timeout=None):
        await asyncio.sleep(timeout)
        raise Empty

    start = time.monotonic()
    with pytest.raises(Empty):
        asyncio.run(notebooks._sliced(never)(timeout=1.2))
    assert 1.1 < time.monotonic() - start < 2.0


def test_the_client_runs_the_notebook_in_the_given_folder(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os; print(os.getcwd())")])
    client = notebooks.notebook_client(nb, timeout=60, working_dir=tmp_path)
    assert client.timeout == 60
    client.execute()
    assert nb.cells[0].outputs[0]["text"].strip() == str(tmp_path)
