"""Download NLM's MeSH XML for a year (descYYYY.xml ~300 MB, qualYYYY.xml ~0.5 MB), atomically.

NLM serves the current production year under ``MESH_FILES/xmlmesh/`` and earlier years under
``<year>/xmlmesh/``; both are tried, the year's folder first. Each file streams into a temporary name in the
target folder and is renamed into place only when complete, so an interrupted download leaves no
half-file behind under the real name. A file already present is kept unless ``force``.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from curation.errors import UserError

NLM_BASE = "https://nlmpubs.nlm.nih.gov/projects/mesh"
CHUNK = 1 << 20


class MeshFetchError(UserError):
    """A MeSH file could not be downloaded; the message names the URLs tried and why."""


def candidate_urls(base: str, year: int, name: str) -> list[str]:
    base = base.rstrip("/")
    return [f"{base}/{year}/xmlmesh/{name}", f"{base}/MESH_FILES/xmlmesh/{name}"]


def _download(url: str, dest: Path, timeout: float, log: bool) -> int:
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    request = urllib.request.Request(url, headers={"User-Agent": "m1-curation (MeSH fetch)"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            done, next_report, started = 0, 0.1, time.monotonic()
            while block := resp.read(CHUNK):
                out.write(block)
                done += len(block)
                if log and total and done / total >= next_report:
                    rate = done / max(time.monotonic() - started, 1e-6) / 1e6
                    print(
                        f"  {dest.name}: {done / 1e6:,.0f} of {total / 1e6:,.0f} MB ({rate:.1f} MB/s)",
                        file=sys.stderr,
                    )
                    next_report += 0.1
        if total and done != total:
            raise MeshFetchError(f"{url}: connection closed after {done:,} of {total:,} bytes")
        os.replace(tmp, dest)
        return done
    finally:
        tmp.unlink(missing_ok=True)


def fetch_mesh(
    year: int,
    out_dir: str | os.PathLike[str],
    *,
    base_url: str = NLM_BASE,
    force: bool = False,
    timeout: float = 60.0,
    log: bool = True,
) -> tuple[Path, Path]:
    """Download descYEAR.xml and qualYEAR.xml into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in (f"desc{year}.xml", f"qual{year}.xml"):
        dest = out / name
        paths.append(dest)
        if dest.is_file() and dest.stat().st_size > 0 and not force:
            if log:
                print(f"{dest} is already here ({dest.stat().st_size:,} bytes); --force downloads it again")
            continue
        tried, ok = [], False
        for url in candidate_urls(base_url, year, name):
            try:
                n = _download(url, dest, timeout, log)
            except urllib.error.HTTPError as exc:
                tried.append(f"{url}: HTTP {exc.code}")
                if exc.code == 404:  # not in this folder: try the next one
                    continue
                break
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                tried.append(f"{url}: {getattr(exc, 'reason', exc)}")
                break
            if log:
                print(f"{url} -> {dest} ({n:,} bytes)")
            ok = True
            break
        if not ok:
            raise MeshFetchError(f"could not download {name} for MeSH {year}:\n  " + "\n  ".join(tried))
    return paths[0], paths[1]
