"""How one batch of requests splits against the ledger, and how answers are put back on every row's key.

`plan_requests` divides requests into those the ledger answers, one row per distinct new id to send, and the
rows that share an id with one being sent; `rekey` gives each (request_id, key) pair its response. Both the
driver (`run_requests`) and the engine workers (`curation.engines.streaming.LedgerFront`) use them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

import schemas


@dataclass(frozen=True)
class RequestPlan:
    """How the rows of one input split: served from the ledger, sent, or fanned back from a sent twin."""

    cached_pairs: pa.Table  # (request_id, key) of rows the ledger answers
    send: pa.Table  # one requests row per distinct new id
    extra_pairs: pa.Table  # (request_id, key) of new rows whose id is already in `send` under another row


def plan_requests(requests: pa.Table, answered_ids: pa.Array) -> RequestPlan:
    """Split ``requests`` against the ledger's answered ids and collapse identical ids."""
    ids = requests.column("request_id")
    answered_mask = (
        pc.is_in(ids, value_set=answered_ids) if len(answered_ids) else pa.repeat(False, requests.num_rows)
    )
    pairs = requests.select(["request_id", "key"])
    cached_pairs = pairs.filter(answered_mask)
    new = requests.filter(pc.invert(answered_mask))
    if new.num_rows == 0:
        return RequestPlan(cached_pairs, new, pairs.schema.empty_table())
    new_ids = new.column("request_id")
    first = pc.index_in(pc.unique(new_ids), new_ids)
    if len(first) == new.num_rows:
        return RequestPlan(cached_pairs, new, pairs.schema.empty_table())
    is_first = pc.is_in(pa.array(range(new.num_rows), pa.int64()), value_set=first.cast(pa.int64()))
    extra = new.select(["request_id", "key"]).filter(pc.invert(is_first))
    return RequestPlan(cached_pairs, new.take(first), extra)


def rekey(pairs: pa.Table, responses: pa.Table) -> pa.Table:
    """One response per (request_id, key) pair, taken from ``responses`` (unique per request_id)."""
    if pairs.num_rows == 0 or responses.num_rows == 0:
        return schemas.get("responses").schema.empty_table()
    joined = pairs.join(responses.drop_columns(["key"]), "request_id", join_type="inner")
    return schemas.conform(joined, "responses")
