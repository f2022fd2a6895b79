"""Memory of writing an ImageJ ROI set: zipfile.ZipFile against nucseg's CompactZipFile.

Each run, in a fresh process, writes ``n`` ROI-sized members (80 bytes, deflated, named
``<label>.roi`` as the segment stage names them) and prints what the peak RSS grew by, the
archive's sha256 (the two must be equal) and its member count.

    python benchmarks/bench_roi_zip.py 300000 1700000
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


def child(kind: str, n: int, path: Path) -> None:
    from nucseg.outputs import ZIP_TIME, CompactZipFile

    cls = CompactZipFile if kind == "compact" else zipfile.ZipFile
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with cls(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(1, n + 1):
            archive.writestr(zipfile.ZipInfo(f"{i}.roi", ZIP_TIME), (b"Iout" + i.to_bytes(4, "big")) * 10, zipfile.ZIP_DEFLATED)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    with zipfile.ZipFile(path) as archive:
        members = len(archive.namelist())
    print(f"{kind:8} {n:>9} {grown:>10.0f} {hashlib.sha256(path.read_bytes()).hexdigest()[:16]:>17} {members:>9}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("counts", type=int, nargs="*", default=[300_000, 1_700_000])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, path = args.child
        child(kind, args.counts[0], Path(path))
        return
    print(f"{'writer':8} {'members':>9} {'+peak MB':>10} {'sha256':>17} {'read back':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.counts:
            for kind in ("zipfile", "compact"):
                subprocess.run([sys.executable, __file__, str(n), "--child", kind, str(Path(tmp) / f"{kind}.zip")], check=True)


if __name__ == "__main__":
    main()
