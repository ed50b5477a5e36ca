"""``memobuild server``: the verifying remote cache server (issue 7).

One module, one job: ``config`` (settings), ``auth`` (bearer tokens), ``storage`` (the local
store's layout plus streamed, verified uploads and stat-checked lookups), ``leases`` (what
in-flight requests use), ``recency`` (batched LRU last-use records), ``eviction``
(``--max-size``), ``bodies`` (reading request bodies under time limits), ``metrics``
(Prometheus), ``app`` (the aiohttp routes) and ``run`` (start-up, binding, shutdown:
``memobuild.server.run.serve(ServerConfig(...))``). Only ``app`` and ``run`` import aiohttp, so
importing ``memobuild`` does not.
"""

from __future__ import annotations

from memobuild.server.config import ServerConfig

__all__ = ["ServerConfig"]
