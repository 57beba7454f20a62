"""A zip archive on a web server, read with HTTP range requests and never stored whole.

A zip's table of contents (the central directory) is at its end, so no reader can unpack one
from its start alone; with ranges, zipfile reads the end first and then each member where it
lies. Reads are served from a read-ahead window: members taken in archive order stream in large
requests. A dropped connection is retried from the byte it stopped at.
"""
import io
import time

import requests

WINDOW = 16 << 20  # bytes a request asks for beyond what was read: members stream, not trickle
RETRIES = 5
TIMEOUT = 60  # seconds without a byte before a connection counts as dropped
REFRESH = (401, 403)  # a signed URL expired: ask for a new one
RETRY_PAUSE = 1.0  # seconds, doubled at each failure in a row (tests set it to 0)


class RangeFile(io.RawIOBase):
    """A read-only, seekable file over `url_source()` (a function, since signed URLs expire)."""

    def __init__(self, url_source, session=None, say=print):
        self.url_source, self.session, self.say = url_source, session or requests.Session(), say
        self.url, self.pos, self.start, self.buffer = url_source(), 0, 0, b""
        self.window = None  # read-ahead in bytes; None: WINDOW
        self.size = int(self._get("bytes=-1").headers["Content-Range"].rpartition("/")[2])

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self.pos

    def seek(self, offset, whence=io.SEEK_SET):
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos

    def read(self, n=-1):
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        if end <= self.pos:
            return b""
        have = self.start + len(self.buffer)
        if not (self.start <= self.pos and end <= have):
            # from the end of what is held when the read begins inside it: no byte asked for twice
            kept = self.buffer[self.pos - self.start:] if self.start <= self.pos <= have else b""
            first = self.pos + len(kept)
            ahead = WINDOW if self.window is None else self.window
            self.start, self.buffer = self.pos, kept + self._fetch(first, min(self.size, max(end, self.pos + ahead)))
        data = self.buffer[self.pos - self.start:end - self.start]
        self.pos = end
        return data

    def readinto(self, b):
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)

    def _fetch(self, start, end) -> bytes:
        """Bytes [start, end): a dropped connection continues from what arrived."""
        parts, got, failures = [], start, 0
        while got < end:
            try:
                with self._get(f"bytes={got}-{end - 1}", stream=True) as response:
                    for chunk in response.iter_content(1 << 20):
                        parts.append(chunk)
                        got += len(chunk)
                if got < end:
                    raise requests.ConnectionError(f"the server sent {got - start} of {end - start} bytes")
            except requests.RequestException as e:
                failures += 1
                if failures > RETRIES:
                    raise
                self.say(f"[download] connection lost at byte {got:,} ({type(e).__name__}); resuming "
                         f"(try {failures} of {RETRIES})")
                time.sleep(min(2 ** failures, 30) * RETRY_PAUSE)
        return b"".join(parts)

    def _get(self, byte_range, stream=False):
        for attempt in (1, 2):
            response = self.session.get(self.url, headers={"Range": byte_range}, stream=stream, timeout=TIMEOUT)
            if response.status_code in REFRESH and attempt == 1:
                response.close()
                self.url = self.url_source()
                continue
            if response.status_code != 206:
                response.close()
                response.raise_for_status()
                raise requests.HTTPError(f"the server does not serve byte ranges (HTTP {response.status_code})",
                                         response=response)
            return response
