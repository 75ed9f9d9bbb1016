"""The install-time warm-up (`python -m curation.devtools.warm_kernels`, run by cluster/install-node.sh) runs the
real dedup and decontamination code on the packaged sample pool."""

from __future__ import annotations


def test_warm_kernels_runs_dedup_and_decontamination_on_the_sample_pool() -> None:
    from curation.devtools.warm_kernels import warm_kernels

    seen = warm_kernels()
    # The demo's ingest keeps 311 of the pool's 341 rows; 6 of them are copies of its evaluation sets' questions.
    assert seen["questions"] == 311
    assert seen["decontaminate_kept"] == 305
    assert [k for k in seen if k.startswith("dedup_")] == ["dedup_0", "dedup_1", "dedup_2"]
