"""Python SDK for serving systems: log predictions and late labels without slowing requests.

    from driftline.client import Driftline

    dl = Driftline("http://driftline:8000", api_key, model="fraud", version="v3")
    dl.log_prediction(request_id, features=x, score=p, latency_ms=ms)  # never blocks or raises
    ...
    dl.log_label(request_id, 1)  # whenever the truth is known

Rows are queued in memory (bounded) and sent in batches by a daemon thread, which rides
out server outages; they are flushed at interpreter exit. `stats()` tells what was
sent and what was dropped, and why.
"""

from driftline.client._transport import ClientStats
from driftline.client.client import Driftline, IngestResult, ReferenceResult
from driftline.client.errors import DriftlineAPIError

__all__ = ["ClientStats", "Driftline", "DriftlineAPIError", "IngestResult", "ReferenceResult"]
