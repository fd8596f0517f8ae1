"""``etcdkit lock`` whose hold is already lost when ``acquire()`` returns: ``python
tests/_lock_lost_probe.py ETCDKIT-ARGS...`` runs the command (``etcdkit.cli.main``) with
``Lock.acquire`` wrapped to delete the hold's key through a client of its own, on the
command's etcd, and to wait for the hold to see it lost before returning. That is what a hold
handed out as its session expires looks like to the command, made certain instead of timed.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from etcdkit import AsyncClient
from etcdkit.cli import main
from etcdkit.recipes.lock import Lock, LockHold


def _losing(acquire: Any) -> Any:
    @functools.wraps(acquire)
    async def wrapper(self: Lock) -> LockHold:
        hold: LockHold = await acquire(self)
        endpoint = sys.argv[sys.argv.index("--endpoints") + 1]
        async with AsyncClient(endpoint) as other:
            await other.delete(hold.key)
        await hold.lost.wait()
        return hold

    return wrapper


if __name__ == "__main__":
    Lock.acquire = _losing(Lock.acquire)  # type: ignore[method-assign]
    sys.exit(main(sys.argv[1:]))
