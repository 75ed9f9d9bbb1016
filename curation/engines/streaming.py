"""Worker side of `map_requests`: each batch of requests is first served from the ledger, the rest is sent.

An engine worker (an OpenAI fan-out actor or a vLLM replica) splits each incoming `requests` batch with
`LedgerFront.split`: ids the ledger answers become ``cached`` response rows at once (batch lookups through a
per-process `LedgerIndex`), duplicate ids inside the batch are sent once, and only the rest goes to the
engine; `LedgerFront.join` puts the batch back together, one `responses` row per input row. The driver
never sees a table: it only passes block references along.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

import schemas
from curation.engines.ledger import Ledger, LedgerIndex
from curation.engines.request_plan import plan_requests, rekey


class LedgerFront:
    """Splits request batches against the ledger and joins the answers back (one row per input row)."""

    def __init__(self, ledger_uri: str) -> None:
        self.index = LedgerIndex(Ledger(ledger_uri))

    def split(self, batch: pa.Table) -> tuple[pa.Table, pa.Table, pa.Table]:
        """(cached responses, one requests row per distinct unanswered id, (request_id, key) of the other
        rows sharing those ids)."""
        requests = schemas.conform(batch, "requests")
        ids = pc.unique(requests.column("request_id"))
        answered = self.index.lookup(ids)
        plan = plan_requests(requests, answered.column("request_id"))
        return rekey(plan.cached_pairs, answered), plan.send, plan.extra_pairs

    @staticmethod
    def join(cached: pa.Table, fresh: pa.Table, extra_pairs: pa.Table) -> pa.Table:
        """The batch's responses: cached rows, fresh rows, and a copy of a fresh row for each duplicate."""
        fresh = schemas.conform(fresh, "responses")
        parts = [cached, fresh]
        if extra_pairs.num_rows:
            parts.append(rekey(extra_pairs, fresh))
        return pa.concat_tables([p for p in parts if p.num_rows] or [fresh])
