"""The sample stage reads narrow columns, then the chosen rows alone (issue 16): the same m1k and samples as
drawing over the whole m23k table in the driver."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from test_sample_stage import cfg, labels_for, m23k_table, store_with

import schemas
from curation.pipeline import StageContext
from curation.rules.sampler import m1_sample, quota_sample, reasoning_words, s1_sample
from curation.stages.sample import SampleStage


@pytest.mark.parametrize(
    "sample",
    [{"size": 120}, {"method": "s1", "size": 90, "seed": 3}, {"method": "quota", "quotas": {"01": 5}}],
)
def test_narrow_draw_equals_the_whole_table_draw(tmp_path: Path, sample: dict) -> None:
    m23k = m23k_table(400)
    labels = labels_for(m23k)
    store = store_with(tmp_path, m23k, labels)
    # many files, out of pool order: positions in the dataset are not positions in pool order
    store.commit(
        [store.write_table("m23k", [m23k.slice(i, 33) for i in range(400, -1, -33)], rows_per_file=50)]
    )
    result = SampleStage().run(StageContext(store=store, config=cfg(**sample), input_hash="h"))
    result.check_accounting("sample")
    store.commit(result.outputs)

    # The whole table in the driver, as the stage did before issue 16.
    whole = store.read_table("m23k").sort_by("pool_index")
    domain = dict(
        zip(labels.column("qid").to_pylist(), labels.column("domain_code").to_pylist(), strict=True)
    )
    domains = [domain[q] for q in whole.column("qid").to_pylist()]
    words = reasoning_words(whole.column("reasoning").to_pylist())
    method = sample.get("method", "m1")
    if method == "m1":
        picked = m1_sample(domains, whole.column("source").to_pylist(), sample["size"], 42)
    elif method == "s1":
        picked = s1_sample(domains, words, sample["size"], sample["seed"])
    else:
        picked, _ = quota_sample(domains, sample["quotas"], 42)
    chosen = whole.take(pa.array(picked, pa.int64()))
    m1k = store.read_table("m1k")
    assert m1k.num_rows == len(picked) > 0
    for name in schemas.get("m23k").schema.names:
        assert m1k.column(name).equals(chosen.column(name)), name
    assert m1k.column("domain_code").to_pylist() == [domains[i] for i in picked]
    samples = store.read_table("samples")
    assert samples.column("reasoning_words").to_pylist() == [words[i] for i in picked]
    assert samples.column("pool_index").to_pylist() == chosen.column("pool_index").to_pylist()
