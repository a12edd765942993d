"""The one place that chooses the directory: :func:`open_store`."""

from __future__ import annotations

from typing import Any, Optional

from presence.store.sqlite import open_directory


def open_store(url: Optional[str], data_dir: str, reactor: Any = None,
               connect: bool = False, **options: Any) -> Any:
    """The embedded SQLite directory under ``data_dir`` when ``url`` is
    None (the default), else the directory in the Redis at ``url``
    (``redis://[:password@]host:port/db`` or ``unix:/path/to/sock[?db=N]``);
    ValueError for a URL that is not one.  Either is opened (connected)
    at its ``start(reactor)``, or here with ``connect=True``.  ``options``
    go to the chosen store (``runner`` for SQLite, ``timeout`` for Redis)."""
    if url is None:
        return open_directory(data_dir, connect=connect, **options)
    from presence.store.redis import open_redis
    return open_redis(url, reactor, connect=connect, **options)
