"""Memory of hostile images: how much a worker grows taking a micro-batch of 12000x12000 PNGs
into its intake, and the API making one thumbnail of one, each measured in a fresh
subprocess (peak RSS over the process's RSS just before). A bench, not a test:

    python bench/memory.py [--images 16] [--side 12000]

Targets (issue 9): the worker grows under 1 GiB for the micro-batch, the API under 100 MiB
for the thumbnail. Rows: main's decode before the guard (the baseline, measured in the same
run on 2 images only: it costs ~0.5 GiB per image), the default JANUS_BATCH_MAX_IMAGE_PIXELS
(the images are refused per item, from their header), and the limit raised above the
image (decoded, then reduced at once, one decode at a time). The worker row runs the real
intake (`CaptionHandler.prepare`: fetch from storage, decode, build the requests the engine
would take), without a database or a model; the API row runs `make_thumbnail`, the route's
decoding step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
WORKER_TARGET_MIB = 1024
API_TARGET_MIB = 100
BEFORE_IMAGES = 2
"""Images of the worker's baseline row: main decoded each whole (~0.5 GiB apiece)."""


# --- the image, written row by row (never whole in memory) -------------------------------


def write_png(path: Path, side: int) -> None:
    """A legal side x side RGB PNG of coloured tiles, a few hundred KiB: a 12000x12000 one
    is 144 Mpx, under Pillow's own bomb limit (179 Mpx), 0.5 GiB once decoded."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    tile = 500
    with path.open("wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n")
        out.write(chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)))
        packer = zlib.compressobj(9)
        for y in range(side):
            row = b"".join(
                bytes([(x * 37 + y // tile * 11) % 256, (y * 3 // tile) % 256, 128]) * tile
                for x in range(0, side // tile + 1)
            )[: 3 * side]
            if data := packer.compress(b"\0" + row):
                out.write(chunk(b"IDAT", data))
        out.write(chunk(b"IDAT", packer.flush()))
        out.write(chunk(b"IEND", b""))


# --- measuring a child -----------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Peak RSS of this process while in the block: the kernel's high-water mark (reset on
    entry through /proc/self/clear_refs) or, failing that, a 2 ms sampler."""

    def __enter__(self) -> PeakRss:
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._reset = self._reset_hwm()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        if self._reset:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.base) / MIB


def _open_image_before(data: bytes, uri: str, size: int | None, *, max_pixels: int) -> Any:
    """worker.caption.open_image as main had it before the guard (no limit, no reduce)."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(data))
    if size and image.format == "JPEG":
        image.draft("RGB", (size, size))
    image.load()
    return image


def _thumbnail_before(data: bytes, size: int) -> bytes:
    """api.ui.thumbs.make_thumbnail as main had it before the guard."""
    import io

    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as source:
        source.draft("RGB", (size, size))
        img = ImageOps.exif_transpose(source)
        img.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
        out = io.BytesIO()
        img.convert("RGB").save(out, "JPEG", quality=82)
        return out.getvalue()


def child_worker(png: Path, images: int, limit: int, before: bool) -> dict[str, Any]:
    """The worker's intake of one micro-batch: fetch from storage, decode, requests built."""
    import worker.caption as caption
    from janus_batch.lifecycle import Claimed
    from janus_batch.settings import Settings
    from janus_batch.storage import LocalStorage

    storage = LocalStorage(png.parent)
    settings = Settings(max_image_pixels=limit or 2**62, fetch_concurrency=8)
    pipeline = SimpleNamespace(
        engine=lambda: SimpleNamespace(image_size=384),
        breaker=SimpleNamespace(success=lambda: None),
    )
    ctx: Any = SimpleNamespace(settings=settings, storage=storage, pipeline=lambda: pipeline)
    job: Any = SimpleNamespace(params={"max_new_tokens": 16})
    uri = f"storage:{png.name}"
    items = [
        Claimed(id=i, job_id="job_bench", idx=i, attempts=1,
                input={"image": uri, "uri": uri, "prompt": "Describe this image.", "seed": i})
        for i in range(images)
    ]  # fmt: skip
    if before:
        caption.open_image = _open_image_before  # type: ignore[assignment]
    handler = caption.CaptionHandler()
    handler.prepare(ctx, job, items[:1])  # warm up: imports, plugins, thread pool
    with PeakRss() as peak:
        work, errors = handler.prepare(ctx, job, items)
    held = sorted({"x".join(map(str, w.request.image.size)) for w in work})
    outcome = [f"{len(work)} decoded, held at {', '.join(held)}"] if work else []
    outcome += [f"{len(errors)} failed"] if errors else []
    return {
        "growth_mib": peak.growth_mib,
        "outcome": "; ".join(outcome),
        "error": errors[0].error if errors else "",
    }


def child_api(png: Path, limit: int, before: bool) -> dict[str, Any]:
    """One thumbnail, as the API's route decodes it."""
    import api.main  # noqa: F401  (the API process's imports, before the baseline)
    from api.ui.thumbs import NotAnImage, make_thumbnail

    data = png.read_bytes()
    with PeakRss() as peak:
        try:
            if before:
                _thumbnail_before(data, 256)
            else:
                make_thumbnail(data, 256, limit)
            outcome, error = "200: thumbnail made", ""
        except NotAnImage as exc:
            outcome, error = "422: refused", f"input 0 {exc}"
    return {"growth_mib": peak.growth_mib, "outcome": outcome, "error": error}


def run_child(args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{done.stdout}\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16, help="images in the micro-batch")
    parser.add_argument("--side", type=int, default=12000, help="side of the PNG in pixels")
    parser.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child is not None:
        warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning above 89 Mpx
        kind, png, count, limit, before = options.child
        if kind == "worker":
            result = child_worker(Path(png), int(count), int(limit), before == "before")
        else:
            result = child_api(Path(png), int(limit), before == "before")
        print(json.dumps(result))
        return

    from janus_batch.settings import Settings

    default = Settings().max_image_pixels
    side, at_limit = options.side, math.isqrt(default)
    with tempfile.TemporaryDirectory(prefix="janus-bench-memory-") as tmp:
        huge, largest = Path(tmp) / "huge.png", Path(tmp) / "at-limit.png"
        for path, n in ((huge, side), (largest, at_limit)):
            started = time.perf_counter()
            write_png(path, n)
            print(
                f"{n}x{n} PNG ({n * n / 1e6:.0f} Mpx): {path.stat().st_size / 1024:.0f} KiB, "
                f"written in {time.perf_counter() - started:.1f} s"
            )
        count = str(options.images)
        raised = str(side * side)  # the limit raised to the image's size: it is decoded
        cases = [  # process, case, image, images, limit ("0": none), main's code?, target
            ("worker", "before (main)", huge, str(BEFORE_IMAGES), "0", True, WORKER_TARGET_MIB),
            ("worker", "default limit", huge, count, str(default), False, WORKER_TARGET_MIB),
            ("worker", "limit raised to the image", huge, count, raised, False, WORKER_TARGET_MIB),
            ("worker", f"image at the limit, {at_limit}^2", largest, count, str(default), False,
             WORKER_TARGET_MIB),
            ("api", "before (main)", huge, "1", "0", True, API_TARGET_MIB),
            ("api", "default limit", huge, "1", str(default), False, API_TARGET_MIB),
            ("api", "limit raised to the image", huge, "1", raised, False, API_TARGET_MIB),
            ("api", f"image at the limit, {at_limit}^2", largest, "1", str(default), False,
             API_TARGET_MIB),
        ]  # fmt: skip
        rows = []
        for kind, label, png, n_images, limit, before, target in cases:
            mode = "before" if before else "after"
            result = run_child([kind, str(png), n_images, limit, mode])
            rows.append((kind, label, n_images, limit, target, result))
            print(f"  measured {kind} {label}: {result['growth_mib']:.0f} MiB", flush=True)

    header = ("process", "case", "images", "limit (px)", "outcome", "RSS growth", "target",
              "growth/target")  # fmt: skip
    lines = [header]
    for kind, label, count, limit, target, result in rows:
        shown_limit = "none" if limit == "0" else f"{int(limit):,}"
        lines.append((
            "worker intake" if kind == "worker" else "API thumbnail", label, count, shown_limit,
            result["outcome"], f"{result['growth_mib']:,.0f} MiB", f"{target:,} MiB",
            f"{result['growth_mib'] / target:.2f}",
        ))  # fmt: skip
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    print()
    for i, line in enumerate(lines):
        cells = (str(cell).ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())
        if i == 0:
            print("  ".join("-" * width for width in widths))
    before_worker = rows[0][5]["growth_mib"] / BEFORE_IMAGES
    print(
        f"\nbefore: ~{before_worker:,.0f} MiB per image in the worker, so ~"
        f"{before_worker * options.images / 1024:,.1f} GiB for {options.images} "
        "(not run: the baseline row holds only "
        f"{BEFORE_IMAGES})."
    )
    for kind, label, *_, result in rows:
        if result["error"]:
            print(f"{kind} {label}: {result['error']}")


if __name__ == "__main__":
    main()
