"""The install-time warm-up (`python -m curation.devtools.warm_kernels`, run by cluster/install-node.sh) runs the
real dedup and decontamination code on the packaged sample pool."""

from __future__ import annotations


def test_warm_kernels_runs_dedup_and_decontamination_on_the_sample_pool() -> None:
    from curation.devtools.warm_kernels import warm_kernels

    seen = warm_kernels()
    # The demo's ingest keeps 311 of the pool's 341 rows; 6 of them are copies of its evaluation sets' questions.
    assert seen["questions"] == 311
    assert seen["decontaminate_kept"] == 305
    # The demo's dedup rule drops 2 near duplicates (as `m1 demo`'s dedup stage reports); every variant ran.
    assert seen["dedup_0_near_duplicates"] == 2
    assert all(seen[f"dedup_{i}_near_duplicates"] >= 0 for i in (1, 2))
