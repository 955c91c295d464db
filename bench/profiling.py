"""Profiling the server under load: py-spy samples every worker process, and the folded stacks
are kept next to the results together with an SVG flame graph drawn from them.

Folded stacks (one ``frame;frame;frame count`` line per distinct stack) are what flamegraph.pl,
speedscope and inferno read, so a profile can be explored further with any of them.
"""

from __future__ import annotations

import gzip
import html
import re
import shutil
import subprocess
import sys
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SAMPLE_RATE_HZ = 250
_LINE_NUMBER = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@contextmanager
def recording(pid: int, folded: Path, *, duration_s: float) -> Iterator[None]:
    """Sample ``pid`` and its worker processes while the block runs (py-spy record, folded output)."""
    executable = py_spy()
    if executable is None:
        print("   py-spy is not installed (pip install py-spy): no profile", flush=True)
        yield
        return
    folded.parent.mkdir(parents=True, exist_ok=True)
    command = [
        executable,
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--rate",
        str(SAMPLE_RATE_HZ),
        "--duration",
        str(int(duration_s + 0.999)),
        "--format",
        "raw",
        "--output",
        str(folded),
        "--nonblocking",
    ]
    sampler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield
    finally:
        _, errors = sampler.communicate(timeout=duration_s + 60)
        if sampler.returncode != 0:
            print(f"   py-spy failed: {errors.decode(errors='replace')[-300:]}", flush=True)


def compress(folded: Path) -> Path:
    """Gzip the folded stacks (a tenth of the size) for keeping with the results."""
    packed = folded.with_name(folded.name + ".gz")
    if folded.exists():
        with folded.open("rb") as source, gzip.open(packed, "wb") as target:
            shutil.copyfileobj(source, target)
        folded.unlink()
    return packed


def read_folded(folded: Path) -> Counter[tuple[str, ...]]:
    stacks: Counter[tuple[str, ...]] = Counter()
    if not folded.exists():
        return stacks
    opener = gzip.open if folded.suffix == ".gz" else open
    with opener(folded, "rt") as lines:
        text = lines.read()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            # py-spy prefixes each stack with the process; merge workers, drop line numbers.
            frames = [_LINE_NUMBER.sub(")", frame) for frame in stack.split(";") if not frame.startswith("process ")]
            stacks[tuple(frames)] += int(count)
    return stacks


def summary(folded: Path, top: int = 15) -> dict[str, Any]:
    """The busiest functions: by own time (self) and with what they call (inclusive), in % of samples."""
    stacks = read_folded(folded)
    total = sum(stacks.values())
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks.items():
        if frames:
            own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return {"samples": 0}

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * count / total, 1)] for name, count in counter.most_common(top)]

    return {"file": folded.name, "samples": total, "self_pct": share(own), "inclusive_pct": share(inclusive)}


def flame_graph(folded: Path, svg: Path, *, title: str, width: int = 1600, row: int = 16) -> None:
    """A static SVG flame graph (root at the bottom), frames under 0.1% of samples left out."""
    stacks = read_folded(folded)
    total = sum(stacks.values())
    if not total:
        return
    tree: dict[str, Any] = {"count": 0, "children": {}}
    for frames, count in stacks.items():
        node = tree
        node["count"] += count
        for frame in frames:
            node = node["children"].setdefault(frame, {"count": 0, "children": {}})
            node["count"] += count
    boxes: list[tuple[float, int, float, str, int]] = []

    def place(node: dict[str, Any], x: float, depth: int) -> None:
        for name, child in sorted(node["children"].items()):
            share = child["count"] / total
            if share >= 0.001:
                boxes.append((x, depth, share * width, name, child["count"]))
                place(child, x, depth + 1)
            x += share * width

    place(tree, 0.0, 0)
    depth = max(box[1] for box in boxes) + 1
    height = (depth + 2) * row
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" '
        'font-size="11">',
        f'<text x="4" y="{row - 4}">{html.escape(title)}: {total} samples (hover a frame for its share)</text>',
    ]
    for x, level, box_width, name, count in boxes:
        y = height - (level + 1) * row
        hue = zlib.crc32(name.encode()) % 60
        label = html.escape(name)
        parts.append(
            f"<g><title>{label}: {count} samples, {100 * count / total:.1f}%</title>"
            f'<rect x="{x:.1f}" y="{y}" width="{max(box_width - 0.5, 0.5):.1f}" height="{row - 1}" '
            f'fill="hsl({hue},85%,62%)"/>'
        )
        characters = int(box_width / 7)
        if characters >= 4:
            shown = name if len(name) <= characters else name[: characters - 2] + ".."
            parts.append(f'<text x="{x + 2:.1f}" y="{y + row - 4}">{html.escape(shown)}</text>')
        parts.append("</g>")
    parts.append("</svg>")
    svg.write_text("\n".join(parts))
