"""The seed's per-image work alone, for bench/data/run.ts's ceiling line: what `format` in
seed_pipeline.py does to one image (open, RGB check, `thumbnail`) and what `datasets` then does to
store it (a PIL image that kept its JPEG format is saved as JPEG at PIL's default quality).

    python bench/data/thumbnail_pil.py --edge 490 IMAGE.jpg ...

Prints one JSON line: the best of three passes' CPU milliseconds per image, one image at a time.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

from PIL import Image


def seed_thumbnail(data: bytes, edge: int) -> bytes:
    image = Image.open(io.BytesIO(data))
    if image.mode != "RGB":
        image = image.convert("RGB")
    image.thumbnail((edge, edge))
    out = io.BytesIO()
    image.save(out, format=image.format or "PNG")
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--edge", type=int, required=True)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("images", nargs="+")
    args = parser.parse_args()
    images = [Path(p).read_bytes() for p in args.images]
    best = float("inf")
    for _ in range(args.passes):
        start = time.process_time()
        for data in images:
            seed_thumbnail(data, args.edge)
        best = min(best, (time.process_time() - start) / len(images) * 1000)
    print(json.dumps({"images": len(images), "cpu_ms_per_image": best}))


if __name__ == "__main__":
    main()
