"""Daily recording files under ``RECEIVER_DATA_DIR/recordings/``: rotated by size, gzipped, expired.

Layout, all in one directory:

- ``YYYY-MM-DD.jsonl``: the file being written (UTC day), one JSON line per request;
- ``YYYY-MM-DD.N.jsonl.gz``: closed files, N counting up within the day. A file is closed when
  it would pass ``recording_max_file_bytes``, when the day changes, and at start-up when it is
  of an earlier day. Closed files are compressed in a thread, off the write path;
- with several worker processes each writes its own files, ``YYYY-MM-DD.wPID[.N].jsonl[.gz]``.

Files of days older than ``recording_retention_days`` are deleted at start-up and at each day
change. Writes are not fsynced one by one: recordings are best effort, a process crash loses
nothing written, a machine crash may lose the last seconds. Closed files are fsynced.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Final

from receiver.file_sink import write_fully
from receiver.recording import RecordingFailed

logger = logging.getLogger("receiver.recording")

FILE_NAME: Final = re.compile(
    r"^(?P<day>\d{4}-\d{2}-\d{2})(?:\.(?P<writer>w\d+))?(?:\.(?P<number>\d+))?\.jsonl(?P<gzip>\.gz)?$"
)
_PARTIAL_SUFFIX: Final = ".partial"


def utc_today() -> date:
    return datetime.now(UTC).date()


@dataclass(frozen=True, slots=True)
class RecordingFileName:
    """What a recording file's name says: its day, writer, rotation number and compression."""

    day: date
    writer: str | None
    number: int | None
    compressed: bool

    @classmethod
    def parse(cls, name: str) -> RecordingFileName | None:
        match = FILE_NAME.match(name)
        if match is None:
            return None
        try:
            day = date.fromisoformat(match["day"])
        except ValueError:
            return None
        number = match["number"]
        return cls(day, match["writer"], None if number is None else int(number), match["gzip"] is not None)

    @property
    def sort_key(self) -> tuple[date, str, float]:
        """Oldest first; the open file of a day after its closed ones."""
        return (self.day, self.writer or "", float("inf") if self.number is None else self.number)


def recording_files(directory: Path) -> list[Path]:
    """The recording files of a directory, oldest first (the order replay reads them in)."""
    named = []
    for path in directory.iterdir():
        name = RecordingFileName.parse(path.name)
        if name is not None and path.is_file():
            named.append((name.sort_key, path))
    return [path for _, path in sorted(named)]


class DailyRecordingFiles:
    """The file outlet of the ``Recorder``; every method that touches the disk runs in a thread."""

    name = "files"

    def __init__(
        self,
        directory: Path,
        *,
        max_file_bytes: int,
        retention_days: int,
        writer: str | None = None,
        today: Callable[[], date] = utc_today,
    ) -> None:
        self.directory = directory
        self.max_file_bytes = max_file_bytes
        self.retention_days = retention_days
        self.writer = writer
        self.today = today
        self._descriptor: int | None = None
        self._day: date | None = None
        self._size = 0
        self._compressing: set[asyncio.Task[None]] = set()

    def _open_name(self, day: date) -> str:
        writer = f".{self.writer}" if self.writer else ""
        return f"{day.isoformat()}{writer}.jsonl"

    async def start(self) -> None:
        try:
            leftovers = await asyncio.to_thread(self._prepare)
        except OSError as exc:
            # A data directory that cannot be written fails the writes, counted; never the start.
            logger.warning("recordings directory not usable", extra={"error": str(exc)})
            return
        for path in leftovers:
            self._compress_later(path)

    def _prepare(self) -> list[Path]:
        """Create the directory, expire old days, and list closed files still to compress."""
        self.directory.mkdir(parents=True, exist_ok=True)
        today = self.today()
        self._expire(today)
        for path in list(self.directory.iterdir()):
            name = RecordingFileName.parse(path.name)
            if path.name.endswith(_PARTIAL_SUFFIX):
                path.unlink()  # a compression interrupted by a crash; its source is still there
            elif name is not None and name.writer == self.writer and name.number is None and name.day < today:
                # The open file of a day the process was down at the end of.
                self._close_file(path, name.day)
        return [path for path in recording_files(self.directory) if self._is_uncompressed_closed_file(path)]

    def _is_uncompressed_closed_file(self, path: Path) -> bool:
        name = RecordingFileName.parse(path.name)
        return name is not None and name.writer == self.writer and name.number is not None and not name.compressed

    def _expire(self, today: date) -> None:
        """Delete the files of days past retention."""
        oldest_kept = today - timedelta(days=self.retention_days)
        for path in self.directory.iterdir():
            name = RecordingFileName.parse(path.name)
            if name is not None and name.day < oldest_kept:
                path.unlink(missing_ok=True)

    async def write(self, lines: Sequence[bytes]) -> None:
        try:
            closed = await asyncio.to_thread(self._write, lines)
        except OSError as exc:
            raise RecordingFailed(f"writing recordings failed: {exc}", lost=len(lines)) from exc
        for path in closed:
            if path.exists():  # a closed file of a day past retention is already gone
                self._compress_later(path)

    def _write(self, lines: Sequence[bytes]) -> list[Path]:
        """Append the lines to the day's file, closing it whenever the next line would pass the
        size bound; returns the files it closed, to be compressed."""
        closed: list[Path] = []
        today = self.today()
        if self._day is not None and today != self._day:
            closed.extend(self._close_current())
            self._expire(today)
        self._open(today)
        chunk: list[bytes] = []
        chunk_size = 0
        for line in lines:
            if self._size + chunk_size > 0 and self._size + chunk_size + len(line) > self.max_file_bytes:
                if chunk:
                    self._append(b"".join(chunk))
                    chunk, chunk_size = [], 0
                closed.extend(self._close_current())
                self._open(today)
            chunk.append(line)
            chunk_size += len(line)
        if chunk:
            self._append(b"".join(chunk))
        return closed

    def _open(self, today: date) -> None:
        if self._descriptor is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self._descriptor = os.open(
            self.directory / self._open_name(today), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640
        )
        self._size = os.fstat(self._descriptor).st_size
        self._day = today

    def _append(self, data: bytes) -> None:
        assert self._descriptor is not None
        write_fully(self._descriptor, data)
        self._size += len(data)

    def _close_current(self) -> list[Path]:
        descriptor, self._descriptor = self._descriptor, None
        day, self._day = self._day, None
        if descriptor is None or day is None:
            return []
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        return [self._close_file(self.directory / self._open_name(day), day)]

    def _close_file(self, path: Path, day: date) -> Path:
        """Rename an open file to the next free ``.N`` of its day."""
        numbers = [
            name.number
            for name in map(RecordingFileName.parse, os.listdir(self.directory))
            if name is not None and name.day == day and name.writer == self.writer and name.number is not None
        ]
        closed = path.with_name(f"{path.name.removesuffix('.jsonl')}.{max(numbers, default=0) + 1}.jsonl")
        path.rename(closed)
        return closed

    def _compress_later(self, path: Path) -> None:
        task = asyncio.create_task(self._compress(path), name=f"recording-gzip-{path.name}")
        self._compressing.add(task)
        task.add_done_callback(self._compressing.discard)

    async def _compress(self, path: Path) -> None:
        try:
            await asyncio.to_thread(compress, path)
        except OSError as exc:
            # The file stays uncompressed; the next start-up tries again.
            logger.warning("could not compress a recording file", extra={"file": path.name, "error": str(exc)})

    async def stop(self) -> None:
        await asyncio.to_thread(self._close_descriptor)
        while self._compressing:
            await asyncio.gather(*self._compressing)

    def _close_descriptor(self) -> None:
        descriptor, self._descriptor = self._descriptor, None
        self._day = None
        if descriptor is not None:
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)


def compress(path: Path) -> Path:
    """Gzip ``path`` to ``path.gz`` and delete it; a crash leaves either file whole, never a torn one.

    Raises ``OSError`` when reading or writing fails.
    """
    target = path.with_name(path.name + ".gz")
    partial = target.with_name(target.name + _PARTIAL_SUFFIX)
    with path.open("rb") as source, partial.open("wb") as raw:
        # Level 1: the rotated file is compressed on the two cores that serve requests, and the
        # repetitive JSON lines still shrink many times over; level 6 costs about twice the CPU.
        with gzip.GzipFile(filename=path.name, mode="wb", fileobj=raw, compresslevel=1) as compressed:
            shutil.copyfileobj(source, compressed, length=1 << 20)
        raw.flush()
        os.fsync(raw.fileno())
    partial.rename(target)
    path.unlink()
    return target
