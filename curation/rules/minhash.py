"""MinHash signatures, LSH banding and exact similarity, vectorised over whole Arrow string arrays.

The rules a reviewer checks:

- **Text normalisation**: Arrow's ``utf8_lower`` (Unicode lower case), then whitespace runs count as one space and
  leading/trailing whitespace is ignored.
- **Shingles**: ``word`` k-shingles are k consecutive words, a word being a run of letters/digits (ASCII
  alphanumerics or any non-ASCII byte), so punctuation separates words and is otherwise ignored; a text with fewer
  than k words (but at least one) is one shingle of all its words. ``char`` k-shingles are k consecutive bytes of
  the normalised UTF-8 text (k characters for ASCII text).
- **Hashes**: each shingle is hashed to 32 bits (FNV-1a over its bytes or word hashes, then a splitmix64
  finaliser); permutation ``p`` maps a shingle hash ``x`` to ``(a_p * x + b_p) mod 2**64 >> 32`` with ``a_p`` odd and
  ``b_p`` random 64-bit numbers drawn from ``numpy.random.default_rng(seed)`` (Dietzfelbinger's multiply-add-shift,
  a 2-independent family for 32-bit keys). A signature is the per-permutation minimum, as in datasketch.
- **LSH**: the signature is cut into ``bands`` bands of ``rows`` values; two texts are candidates iff some band is
  equal in both. The probability that a pair with Jaccard ``s`` becomes a candidate is ``1 - (1 - s**rows)**bands``
  (:func:`detection_probability`).

The kernels are compiled with numba and run over the raw bytes and offsets of an Arrow string array, one text per
parallel iteration; the result depends only on the texts and the seed, never on the number of threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

WORD = 0
CHAR = 1
SHINGLE_KINDS = {"word": WORD, "char": CHAR}

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


# ------------------------------------------------------------------------------------------ parameters


def detection_probability(similarity: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """P(a pair with Jaccard ``similarity`` shares at least one band) = 1 - (1 - s^rows)^bands."""
    s = np.asarray(similarity, dtype=np.float64)
    p = 1.0 - (1.0 - s**rows) ** bands
    return float(p) if p.ndim == 0 else p


def optimal_bands(
    threshold: float, num_perm: int, *, fp_weight: float = 0.5, fn_weight: float = 0.5
) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising the weighted false-positive area below ``threshold``
    plus the false-negative area above it (datasketch's ``_optimal_param`` rule, integrated numerically)."""
    best, best_err = (1, num_perm), float("inf")
    lo = np.linspace(0.0, threshold, 201)
    hi = np.linspace(threshold, 1.0, 201)
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = np.trapezoid(detection_probability(lo, bands, rows), lo)
            fn = np.trapezoid(1.0 - detection_probability(hi, bands, rows), hi)
            err = fp_weight * fp + fn_weight * fn
            if err < best_err:
                best, best_err = (bands, rows), err
    return best


def detection_curve(
    bands: int, rows: int, points: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
) -> str:
    """One line: the probability of becoming a candidate at each Jaccard in ``points``."""
    return "  ".join(f"J={s:.2f}: {detection_probability(s, bands, rows):.3f}" for s in points)


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) uint64 arrays of the ``num_perm`` hash functions for ``seed`` (a odd)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, np.iinfo(np.uint64).max, size=num_perm, dtype=np.uint64, endpoint=True) | np.uint64(1)
    b = rng.integers(0, np.iinfo(np.uint64).max, size=num_perm, dtype=np.uint64, endpoint=True)
    return a, b


# ------------------------------------------------------------------------------------------ kernels


@numba.njit(inline="always")
def _mix64(z: np.uint64) -> np.uint64:  # splitmix64 finaliser
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@numba.njit(inline="always")
def _is_space(c: np.uint8) -> bool:
    return c == 32 or (9 <= c <= 13)


@numba.njit(inline="always")
def _is_word(c: np.uint8) -> bool:
    return (48 <= c <= 57) or (97 <= c <= 122) or (65 <= c <= 90) or c >= 128


@numba.njit(nogil=True, cache=True)
def _emit_shingles(data, start, end, kind, k, out, write):  # noqa: ANN001, ANN202
    """Write the 64-bit shingle hashes of data[start:end] into ``out`` (when ``write``); return how many."""
    n = 0
    ring = np.zeros(k, dtype=np.uint64)
    if kind == 0:  # words
        count = 0
        i = start
        while i < end:
            while i < end and not _is_word(data[i]):
                i += 1
            if i >= end:
                break
            h = _FNV_OFFSET
            while i < end and _is_word(data[i]):
                h = (h ^ np.uint64(data[i])) * _FNV_PRIME
                i += 1
            ring[count % k] = h
            count += 1
            if count >= k:
                s = _FNV_OFFSET
                for j in range(k):
                    s = (s ^ ring[(count - k + j) % k]) * _FNV_PRIME
                if write:
                    out[n] = _mix64(s)
                n += 1
        if 0 < count < k:
            s = _FNV_OFFSET
            for j in range(count):
                s = (s ^ ring[j]) * _FNV_PRIME
            if write:
                out[n] = _mix64(s)
            n += 1
    else:  # bytes of the whitespace-collapsed text
        count = 0
        pending_space = False
        i = start
        while i < end:
            c = data[i]
            i += 1
            if _is_space(c):
                pending_space = count > 0
                continue
            for piece in range(2):
                if piece == 0:
                    if not pending_space:
                        continue
                    b = np.uint64(32)
                    pending_space = False
                else:
                    b = np.uint64(c)
                ring[count % k] = b
                count += 1
                if count >= k:
                    s = _FNV_OFFSET
                    for j in range(k):
                        s = (s ^ ring[(count - k + j) % k]) * _FNV_PRIME
                    if write:
                        out[n] = _mix64(s)
                    n += 1
        if 0 < count < k:
            s = _FNV_OFFSET
            for j in range(count):
                s = (s ^ ring[j]) * _FNV_PRIME
            if write:
                out[n] = _mix64(s)
            n += 1
    return n


@numba.njit(inline="always")
def _block(n, blocks, i):  # noqa: ANN001, ANN202
    return i * n // blocks, (i + 1) * n // blocks


@numba.njit(parallel=True, nogil=True, cache=True)
def _signatures(data, offsets, kind, k, a, b, sig, counts):  # noqa: ANN001, ANN202
    n_docs = len(offsets) - 1
    num_perm = len(a)
    blocks = min(n_docs, 512)  # one scratch buffer per block of texts, not one allocation per text
    for blk in numba.prange(blocks):
        d0, d1 = _block(n_docs, blocks, blk)
        longest = 0
        for d in range(d0, d1):
            longest = max(longest, offsets[d + 1] - offsets[d])
        buf = np.empty(longest + 1, dtype=np.uint64)
        for d in range(d0, d1):
            m = _emit_shingles(data, offsets[d], offsets[d + 1], kind, k, buf, True)
            counts[d] = m
            row = sig[d]
            for p in range(num_perm):
                row[p] = 0xFFFFFFFF
            for t in range(m):
                x = buf[t] >> np.uint64(32)  # a 32-bit key for multiply-add-shift
                for p in range(num_perm):
                    v = np.uint32((a[p] * x + b[p]) >> np.uint64(32))
                    if v < row[p]:
                        row[p] = v


@numba.njit(parallel=True, nogil=True, cache=True)
def _count_shingles(data, offsets, kind, k, counts):  # noqa: ANN001, ANN202
    none = np.empty(1, dtype=np.uint64)
    for d in numba.prange(len(offsets) - 1):
        counts[d] = _emit_shingles(data, offsets[d], offsets[d + 1], kind, k, none, False)


@numba.njit(parallel=True, nogil=True, cache=True)
def _fill_shingle_sets(data, offsets, kind, k, out_offsets, out, sizes):  # noqa: ANN001, ANN202
    for d in numba.prange(len(offsets) - 1):
        lo = out_offsets[d]
        m = _emit_shingles(data, offsets[d], offsets[d + 1], kind, k, out[lo : out_offsets[d + 1]], True)
        view = out[lo : lo + m]
        view.sort()
        u = 0
        for t in range(m):  # unique, in place
            if t == 0 or view[t] != view[t - 1]:
                out[lo + u] = view[t]
                u += 1
        sizes[d] = u


@numba.njit(parallel=True, nogil=True, cache=True)
def _pair_jaccard(lv, lo, ls, rv, ro, rs, left, right, out):  # noqa: ANN001, ANN202
    for t in numba.prange(len(left)):
        i, j = left[t], right[t]
        pi, pj = lo[i], ro[j]
        ei, ej = pi + ls[i], pj + rs[j]
        inter = 0
        while pi < ei and pj < ej:
            if lv[pi] == rv[pj]:
                inter += 1
                pi += 1
                pj += 1
            elif lv[pi] < rv[pj]:
                pi += 1
            else:
                pj += 1
        union = ls[i] + rs[j] - inter
        out[t] = inter / union if union > 0 else 0.0


@numba.njit(parallel=True, nogil=True, cache=True)
def _band_hashes(sig, bands, rows, out):  # noqa: ANN001, ANN202
    for d in numba.prange(sig.shape[0]):
        for band in range(bands):
            h = _FNV_OFFSET ^ np.uint64(band)
            for r in range(rows):
                h = (h ^ np.uint64(sig[d, band * rows + r])) * _FNV_PRIME
            out[d, band] = _mix64(h)


@numba.njit(parallel=True, nogil=True, cache=True)
def _text_keys(data, offsets, normalize, out):  # noqa: ANN001, ANN202
    """Two independent 64-bit FNV-1a hashes of each text (whitespace collapsed when ``normalize``)."""
    for d in numba.prange(len(offsets) - 1):
        h1 = _FNV_OFFSET
        h2 = np.uint64(0x84222325CBF29CE4)
        pending = False
        started = False
        for i in range(offsets[d], offsets[d + 1]):
            c = data[i]
            if normalize and _is_space(c):
                pending = started
                continue
            if pending:
                h1 = (h1 ^ np.uint64(32)) * _FNV_PRIME
                h2 = (h2 ^ np.uint64(32)) * np.uint64(0x00000100000001B3 + 0x2E)
                pending = False
            started = True
            h1 = (h1 ^ np.uint64(c)) * _FNV_PRIME
            h2 = (h2 ^ np.uint64(c)) * np.uint64(0x00000100000001B3 + 0x2E)
        out[d, 0] = _mix64(h1)
        out[d, 1] = _mix64(h2)


@numba.njit(nogil=True, cache=True)
def _run_ranks(sorted_hashes, sorted_rows, band, ranks):  # noqa: ANN001, ANN202
    """Each row's rank in its run of equal hashes (rows of a run are in position order: the sort is stable)."""
    s = 0
    n = len(sorted_hashes)
    while s < n:
        e = s + 1
        while e < n and sorted_hashes[e] == sorted_hashes[s]:
            e += 1
        for x in range(s, e):
            ranks[sorted_rows[x], band] = x - s
        s = e


@numba.njit(nogil=True, cache=True, inline="always")
def _hist_l1(a, b):  # noqa: ANN001, ANN202
    """L1 distance of two character histograms: a lower bound on the Indel distance of their texts (each
    insertion or deletion moves one count by one; merged bins only lower it)."""
    total = 0
    for k in range(len(a)):
        total += abs(np.int64(a[k]) - np.int64(b[k]))
    return total


@numba.njit(parallel=True, nogil=True, cache=True)
def _band_pairs(bands, sorted_rows, ranks, max_bucket, lengths, hist, slack, use_ratio, offsets, out, fill):  # noqa: ANN001, ANN202
    """Candidate pairs of every band, each pair once (in the first band where it is paired), one band per
    parallel iteration; with ``fill`` False only counts them into ``offsets[band + 1]``.

    In a run of equal hashes (members in position order) each member pairs with the members before it, or with
    the run's first ``max_bucket`` members when the run is longer. A pair is left to an earlier band when it
    shares that band's hash and its earlier member ranks below ``max_bucket`` there (so it was paired there).
    A run's members are gathered into contiguous buffers first: the pair loop is quadratic in the run, and
    reading rows scattered over the pool would make it wait on memory."""
    n_bands = bands.shape[1]
    m = sorted_rows.shape[1]
    n_bins = hist.shape[1]
    for band in numba.prange(n_bands):
        total = 0
        base = offsets[band]
        s = 0
        while s < m:
            h = bands[sorted_rows[band, s], band]
            e = s + 1
            while e < m and bands[sorted_rows[band, e], band] == h:
                e += 1
            size = e - s
            if size > 1:
                prior = np.empty((size, band), np.uint64)
                prior_rank = np.empty((size, band), np.int32)
                run_len = np.empty(size, np.int64)
                run_hist = np.empty((size if use_ratio else 1, n_bins), np.int32)
                for x in range(size):
                    r = sorted_rows[band, s + x]
                    for other in range(band):
                        prior[x, other] = bands[r, other]
                        prior_rank[x, other] = ranks[r, other]
                    if use_ratio:
                        run_len[x] = lengths[r]
                        for k in range(n_bins):
                            run_hist[x, k] = hist[r, k]
                for x in range(1, size):
                    lim = x if x < max_bucket else max_bucket
                    for y in range(lim):
                        if use_ratio:
                            la = run_len[y]
                            lb = run_len[x]
                            budget = slack * (la + lb)
                            if abs(la - lb) > budget:
                                continue
                        seen = False
                        for other in range(band):
                            if prior[y, other] == prior[x, other] and prior_rank[y, other] < max_bucket:
                                seen = True
                                break
                        if seen:
                            continue
                        if use_ratio:
                            if _hist_l1(run_hist[y], run_hist[x]) > budget:
                                continue
                        if fill:
                            out[base + total, 0] = sorted_rows[band, s + y]
                            out[base + total, 1] = sorted_rows[band, s + x]
                        total += 1
            s = e
        if not fill:
            offsets[band + 1] = total


@numba.njit(parallel=True, nogil=True, cache=True)
def _char_profiles(data, offsets, hist, lengths):  # noqa: ANN001, ANN202
    """Per UTF-8 text: its length in code points and a histogram of them (ASCII one bin each, other code points
    folded into 64 bins; counts saturate at 65,535, which keeps every L1 a lower bound)."""
    for d in numba.prange(len(offsets) - 1):
        i = offsets[d]
        end = offsets[d + 1]
        count = 0
        while i < end:
            c = np.int64(data[i])
            if c < 0x80:
                cp = c
                i += 1
            elif c < 0xE0:
                cp = ((c & 0x1F) << 6) | (np.int64(data[i + 1]) & 0x3F)
                i += 2
            elif c < 0xF0:
                cp = (
                    ((c & 0x0F) << 12)
                    | ((np.int64(data[i + 1]) & 0x3F) << 6)
                    | (np.int64(data[i + 2]) & 0x3F)
                )
                i += 3
            else:
                cp = (
                    ((c & 0x07) << 18)
                    | ((np.int64(data[i + 1]) & 0x3F) << 12)
                    | ((np.int64(data[i + 2]) & 0x3F) << 6)
                    | (np.int64(data[i + 3]) & 0x3F)
                )
                i += 4
            k = cp if cp < 128 else 128 + cp % 64
            if hist[d, k] < 65535:
                hist[d, k] += 1
            count += 1
        lengths[d] = count


@numba.njit(nogil=True, cache=True)
def _hash_join(
    left, right, out_left, out_right, fill, left_len, left_hist, right_len, right_hist, slack, use_ratio
):  # noqa: ANN001, ANN202
    """All (i, j) with left[i] == right[j] (uint64 hashes), by an open-addressing table over ``right``; counts
    only when ``fill`` is False. With ``use_ratio``, pairs whose fuzz.ratio is certainly below the cutoff (length
    and character-histogram bounds, as in :func:`_band_pairs`) are left out."""
    m = len(right)
    size = 2
    while size < 2 * m:
        size *= 2
    mask = size - 1
    slots = np.full(size, -1, dtype=np.int64)  # first right index with the slot's key
    keys = np.zeros(size, dtype=np.uint64)
    chain = np.full(max(m, 1), -1, dtype=np.int64)  # next right index with the same key
    for j in range(m):
        s = np.int64(_mix64(right[j]) & np.uint64(mask))
        while slots[s] != -1 and keys[s] != right[j]:
            s = (s + 1) & mask
        if slots[s] != -1:
            chain[j] = slots[s]
        keys[s] = right[j]
        slots[s] = j
    total = 0
    for i in range(len(left)):
        s = np.int64(_mix64(left[i]) & np.uint64(mask))
        while slots[s] != -1 and keys[s] != left[i]:
            s = (s + 1) & mask
        j = slots[s]
        while j != -1:
            keep = True
            if use_ratio:
                la = left_len[i]
                lb = right_len[j]
                budget = slack * (la + lb)
                if abs(la - lb) > budget:
                    keep = False
                else:
                    keep = _hist_l1(left_hist[i], right_hist[j]) <= budget
            if keep:
                if fill:
                    out_left[total] = i
                    out_right[total] = j
                total += 1
            j = chain[j]
    return total


# ------------------------------------------------------------------------------------------ API


def _string_buffers(
    texts: pa.Array | pa.ChunkedArray | Sequence[str], lower: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(UTF-8 bytes, int64 offsets) of ``texts`` (nulls are empty), lower-cased when ``lower``."""
    arr = texts if isinstance(texts, pa.Array | pa.ChunkedArray) else pa.array(list(texts), pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], pa.string())
    arr = arr.cast(pa.large_string()).fill_null("")
    if lower:
        arr = pc.utf8_lower(arr)
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64, count=len(arr) + 1, offset=arr.offset * 8)
    data = (
        np.frombuffer(data_buf, dtype=np.uint8)
        if data_buf is not None and data_buf.size
        else np.zeros(1, np.uint8)
    )
    return data, offsets


@dataclass(frozen=True)
class MinHasher:
    """Signatures for one (shingle kind, k, num_perm, seed)."""

    shingle: str = "word"
    k: int = 5
    num_perm: int = 128
    seed: int = 1

    def __post_init__(self) -> None:
        if self.shingle not in SHINGLE_KINDS:
            raise ValueError(f"shingle must be one of {sorted(SHINGLE_KINDS)}, not {self.shingle!r}")
        if self.k < 1 or self.num_perm < 1:
            raise ValueError("k and num_perm must be positive")

    def signatures(self, texts: pa.Array | pa.ChunkedArray | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(uint32 [n, num_perm] signatures, int32 [n] shingle counts); a text without shingles has count 0."""
        data, offsets = _string_buffers(texts, lower=True)
        a, b = permutations(self.num_perm, self.seed)
        n = len(offsets) - 1
        sig = np.empty((n, self.num_perm), dtype=np.uint32)
        counts = np.empty(n, dtype=np.int32)
        if n:
            _signatures(data, offsets, SHINGLE_KINDS[self.shingle], self.k, a, b, sig, counts)
        return sig, counts

    def shingle_sets(self, texts: pa.Array | pa.ChunkedArray | Sequence[str]) -> ShingleSets:
        """Sorted unique shingle hashes of every text (for exact Jaccard)."""
        data, offsets = _string_buffers(texts, lower=True)
        n = len(offsets) - 1
        kind = SHINGLE_KINDS[self.shingle]
        counts = np.zeros(n, dtype=np.int64)
        if n:
            _count_shingles(data, offsets, kind, self.k, counts)
        out_offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=out_offsets[1:])
        values = np.zeros(int(out_offsets[-1]) + 1, dtype=np.uint64)
        sizes = np.zeros(n, dtype=np.int64)
        if n:
            # Each text's slice holds exactly the shingles counted above (the same kernel emits them).
            _fill_shingle_sets(data, offsets, kind, self.k, out_offsets, values, sizes)
        return ShingleSets(values, out_offsets, sizes)


@dataclass(frozen=True)
class ShingleSets:
    """Sorted unique shingle hashes per text: ``values[offsets[i] : offsets[i] + sizes[i]]``."""

    values: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray

    def jaccard(self, left: np.ndarray, right: np.ndarray, other: ShingleSets | None = None) -> np.ndarray:
        """Exact Jaccard similarity of the shingle sets of texts ``left[t]`` (here) and ``right[t]`` (in
        ``other``, default here); two texts without shingles have similarity 0."""
        o = self if other is None else other
        left = np.ascontiguousarray(left, dtype=np.int64)
        right = np.ascontiguousarray(right, dtype=np.int64)
        out = np.empty(len(left), dtype=np.float64)
        if len(left):
            _pair_jaccard(
                self.values, self.offsets, self.sizes, o.values, o.offsets, o.sizes, left, right, out
            )
        return out

    def take(self, rows: np.ndarray) -> ShingleSets:
        """The sets of ``rows`` only, renumbered 0..len(rows)-1."""
        rows = np.asarray(rows, dtype=np.int64)
        sizes = self.sizes[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        idx = np.repeat(self.offsets[rows] - offsets[:-1], sizes) + np.arange(int(offsets[-1]))
        return ShingleSets(self.values[idx], offsets, sizes)


def word_counts(texts: pa.Array | pa.ChunkedArray | Sequence[str]) -> np.ndarray:
    """int64 [n]: words per text (runs of letters/digits, as the word shingles see them)."""
    data, offsets = _string_buffers(texts, lower=False)
    counts = np.zeros(len(offsets) - 1, dtype=np.int64)
    if len(counts):
        _count_shingles(data, offsets, WORD, 1, counts)
    return counts


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """uint64 [n, bands]: one hash per band of ``rows`` signature values."""
    if bands * rows > sig.shape[1]:
        raise ValueError(f"bands x rows = {bands * rows} exceeds the {sig.shape[1]} permutations")
    out = np.empty((sig.shape[0], bands), dtype=np.uint64)
    if sig.shape[0]:
        _band_hashes(np.ascontiguousarray(sig), bands, rows, out)
    return out


def text_keys(texts: pa.Array | pa.ChunkedArray | Sequence[str], *, normalize: bool) -> np.ndarray:
    """uint64 [n, 2]: a 128-bit key per text for exact dedup; ``normalize``: lower case, whitespace collapsed."""
    data, offsets = _string_buffers(texts, lower=normalize)
    out = np.empty((len(offsets) - 1, 2), dtype=np.uint64)
    if len(out):
        _text_keys(data, offsets, normalize, out)
    return out


PROFILE_BINS = 192


@dataclass
class CharProfiles:
    """Per text: its length in code points and its character histogram (:func:`char_profiles`): enough to rule
    out, exactly, pairs whose ``fuzz.ratio`` cannot reach a cutoff, before any string is compared."""

    lengths: np.ndarray  # int64 [n]
    hist: np.ndarray  # uint16 [n, PROFILE_BINS]

    @staticmethod
    def concat(parts: Sequence[CharProfiles]) -> CharProfiles:
        if not parts:
            return CharProfiles(np.empty(0, np.int64), np.empty((0, PROFILE_BINS), np.uint16))
        return CharProfiles(
            np.concatenate([p.lengths for p in parts]), np.concatenate([p.hist for p in parts], axis=0)
        )


def char_profiles(texts: pa.Array | pa.ChunkedArray | Sequence[str]) -> CharProfiles:
    """Code-point lengths and histograms of ``texts`` (nulls are empty), exactly as rapidfuzz sees the strings."""
    data, offsets = _string_buffers(texts, lower=False)
    n = len(offsets) - 1
    hist = np.zeros((n, PROFILE_BINS), np.uint16)
    lengths = np.zeros(n, np.int64)
    if n:
        _char_profiles(data, offsets, hist, lengths)
    return CharProfiles(lengths, hist)


def candidate_pairs(
    bands: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    max_bucket: int = 1000,
    ratio_cutoff: float | None = None,
    profiles: CharProfiles | None = None,
) -> tuple[np.ndarray, int]:
    """Unique candidate pairs (int64 [m, 2], left < right, sorted) of rows sharing a band hash.

    ``valid``: rows that may pair (rows without shingles share the empty signature and must not).
    ``ratio_cutoff`` with ``profiles``: drop, while pairing, pairs whose rapidfuzz ``fuzz.ratio`` (0-100) is
    certainly below the cutoff (length and character-histogram bounds: exact, never a guess), so that pools
    with many similar texts (templated stems share bands) never hold their dissimilar pairs in memory.
    Every pair is produced once, in the first band that pairs it, so no global de-duplication is needed.
    Returns the pairs and how many buckets were larger than ``max_bucket`` (their members pair only with the
    bucket's first ``max_bucket`` rows)."""
    n, n_bands = bands.shape
    index = np.arange(n, dtype=np.int64) if valid is None else np.flatnonzero(valid).astype(np.int64)
    bands = np.ascontiguousarray(bands)
    # Row ids per band in hash order, and each row's rank in its run: 8 bytes per row and band.
    sorted_rows = np.empty((n_bands, len(index)), np.int32 if n < 2**31 else np.int64)
    ranks = np.zeros((n, n_bands), np.int32)
    capped = 0
    for band in range(n_bands):
        h = bands[index, band]
        order = np.argsort(h, kind="stable")  # stable: each run of equal hashes stays in position order
        sorted_rows[band] = index[order]
        sh = h[order]
        _run_ranks(sh, sorted_rows[band], band, ranks)
        if len(sh):
            sizes = np.diff(np.flatnonzero(np.r_[True, sh[1:] != sh[:-1], True]))
            capped += int((sizes > max_bucket).sum())
    use_ratio = ratio_cutoff is not None
    if use_ratio and profiles is None:
        raise ValueError("ratio_cutoff needs the texts' profiles (char_profiles)")
    lengths = profiles.lengths if profiles is not None else np.zeros(1, np.int64)
    hist = profiles.hist if profiles is not None else np.zeros((1, 1), np.uint16)
    # A hair of slack so that float rounding can only keep a pair, never drop one rapidfuzz would pass.
    slack = (1.0 - ratio_cutoff / 100.0) + 1e-9 if use_ratio else 0.0
    offsets = np.zeros(n_bands + 1, np.int64)
    none = np.empty((0, 2), np.int64)
    _band_pairs(bands, sorted_rows, ranks, max_bucket, lengths, hist, slack, use_ratio, offsets, none, False)
    offsets = np.cumsum(offsets)
    out = np.empty((int(offsets[-1]), 2), np.int64)
    _band_pairs(bands, sorted_rows, ranks, max_bucket, lengths, hist, slack, use_ratio, offsets, out, True)
    order = np.argsort(out[:, 0] * max(n, 1) + out[:, 1], kind="stable")
    return out[order], capped


def cross_pairs(
    left_bands: np.ndarray,
    right_bands: np.ndarray,
    *,
    left_valid: np.ndarray,
    right_valid: np.ndarray,
    ratio_cutoff: float | None = None,
    left_profiles: CharProfiles | None = None,
    right_profiles: CharProfiles | None = None,
) -> np.ndarray:
    """Unique (left row, right row) pairs, int64 [m, 2], sharing a band hash between two collections.

    ``ratio_cutoff`` with both sides' profiles: leave out pairs whose ``fuzz.ratio`` is certainly below it
    (exact bounds, as :func:`candidate_pairs`)."""
    nr = right_bands.shape[0]
    li = np.flatnonzero(left_valid).astype(np.int64)
    ri = np.flatnonzero(right_valid).astype(np.int64)
    use_ratio = ratio_cutoff is not None
    if use_ratio:
        if left_profiles is None or right_profiles is None:
            raise ValueError("ratio_cutoff needs both sides' profiles (char_profiles)")
        ll, lh = left_profiles.lengths[li], np.ascontiguousarray(left_profiles.hist[li])
        rl, rh = right_profiles.lengths[ri], np.ascontiguousarray(right_profiles.hist[ri])
        slack = (1.0 - ratio_cutoff / 100.0) + 1e-9  # rounding may only keep a pair, never drop one
    else:
        ll = rl = np.zeros(1, np.int64)
        lh = rh = np.zeros((1, 1), np.uint16)
        slack = 0.0
    keys: list[np.ndarray] = []
    for band in range(left_bands.shape[1]):
        hl = np.ascontiguousarray(left_bands[li, band])
        hr = np.ascontiguousarray(right_bands[ri, band])
        none = np.empty(0, np.int64)
        total = _hash_join(hl, hr, none, none, False, ll, lh, rl, rh, slack, use_ratio)
        if not total:
            continue
        lefts = np.empty(total, np.int64)
        rights = np.empty(total, np.int64)
        _hash_join(hl, hr, lefts, rights, True, ll, lh, rl, rh, slack, use_ratio)
        keys.append(li[lefts] * nr + ri[rights])
    merged = np.unique(np.concatenate(keys)) if keys else np.empty(0, np.int64)
    return np.stack([merged // max(nr, 1), merged % max(nr, 1)], axis=1)


@numba.njit(nogil=True, cache=True)
def _run_pairs(hashes, keys, rows, lengths, max_bucket, slack, use_ratio, out, fill):  # noqa: ANN001, ANN202
    """Pairs inside runs of equal (hash, key >> 40) of records sorted by (hash, key): each member with the
    members before it, or with the run's first ``max_bucket`` members when the run is longer (as
    :func:`_band_pairs`); with ``use_ratio``, pairs whose lengths rule the cutoff out are left out. Counts
    only when ``fill`` is False; returns (pairs, runs longer than ``max_bucket``)."""
    n = len(hashes)
    total = 0
    capped = 0
    s = 0
    while s < n:
        e = s + 1
        while e < n and hashes[e] == hashes[s] and (keys[e] >> 40) == (keys[s] >> 40):
            e += 1
        size = e - s
        if size > max_bucket:
            capped += 1
        for x in range(1, size):
            lim = x if x < max_bucket else max_bucket
            for y in range(lim):
                if use_ratio:
                    la = lengths[s + y]
                    lb = lengths[s + x]
                    if abs(la - lb) > slack * (la + lb):
                        continue
                if fill:
                    out[total, 0] = rows[s + y]
                    out[total, 1] = rows[s + x]
                total += 1
        s = e
    return total, capped


BAND_SHIFT = 40  # a bucket record's key: band << 40 | row (rows below 2**40, bands below 2**23)


def bucket_pairs(
    hashes: np.ndarray,
    keys: np.ndarray,
    *,
    lengths: np.ndarray | None = None,
    max_bucket: int = 1000,
    ratio_cutoff: float | None = None,
) -> tuple[np.ndarray, int]:
    """Candidate pairs (int64 [m, 2], left < right, possibly repeated across bands) of bucket records: a record
    is a row in one band, ``hashes`` its band hash and ``keys`` ``band << BAND_SHIFT | row``; records must hold
    every record of each (band, hash) they contain, only rows that may pair (:func:`candidate_pairs`'
    ``valid``). Within a bucket each row pairs with the rows before it, or the bucket's first ``max_bucket``:
    the union over bands is exactly :func:`candidate_pairs`' set before its histogram bound (``lengths``:
    code-point lengths, for the length bound of ``ratio_cutoff``). Returns the pairs and how many buckets were
    larger than ``max_bucket``."""
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    keys = np.ascontiguousarray(keys, dtype=np.uint64)
    order = np.lexsort((keys, hashes))
    hashes, keys = hashes[order], keys[order]
    rows = (keys & np.uint64((1 << BAND_SHIFT) - 1)).astype(np.int64)
    use_ratio = ratio_cutoff is not None
    if use_ratio and lengths is None:
        raise ValueError("ratio_cutoff needs the texts' lengths")
    lens = np.ascontiguousarray(lengths[order], dtype=np.int64) if use_ratio else np.zeros(1, np.int64)
    slack = (1.0 - ratio_cutoff / 100.0) + 1e-9 if use_ratio else 0.0
    none = np.empty((0, 2), np.int64)
    total, capped = _run_pairs(hashes, keys, rows, lens, max_bucket, slack, use_ratio, none, False)
    out = np.empty((total, 2), np.int64)
    _run_pairs(hashes, keys, rows, lens, max_bucket, slack, use_ratio, out, True)
    return out, int(capped)


def histogram_bound(
    profiles: CharProfiles, left: np.ndarray, right: np.ndarray, ratio_cutoff: float
) -> np.ndarray:
    """bool [m]: whether pair ``(left[t], right[t])`` of texts with ``profiles`` may reach ``fuzz.ratio`` >=
    ``ratio_cutoff`` by the length and character-histogram bounds of :func:`candidate_pairs` (exact)."""
    slack = (1.0 - ratio_cutoff / 100.0) + 1e-9
    keep = np.empty(len(left), dtype=bool)
    for lo in range(0, len(left), 32_768):
        a, b = left[lo : lo + 32_768], right[lo : lo + 32_768]
        la, lb = profiles.lengths[a], profiles.lengths[b]
        budget = slack * (la + lb)
        l1 = np.abs(profiles.hist[a].astype(np.int32) - profiles.hist[b].astype(np.int32)).sum(axis=1)
        keep[lo : lo + 32_768] = (np.abs(la - lb) <= budget) & (l1 <= budget)
    return keep


def set_threads(n: int | None) -> None:
    """Threads for the kernels (None: all cores numba sees)."""
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS) if n else numba.config.NUMBA_NUM_THREADS)
