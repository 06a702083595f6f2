"""A POST's body: multipart/form-data, the grant's fields and the file streamed between them.

The fields and the file part's head are bytes made once per upload, the file's bytes are read
(and hashed) as the socket takes them, and the closing boundary follows. A read fills the block
it is asked for across those pieces, so a small file goes out as one write to the socket, not
three. The bytes are those a browser's form (and requests-toolbelt's MultipartEncoder, used
before) would send: each field's name, and the file's name, quoted as HTML5 says
(urllib3's `format_multipart_header_param`), values in UTF-8, no Content-Type for the file part.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from urllib3.fields import format_multipart_header_param

from agent.body import HashingBody


class FormBody:
    """Reads as multipart/form-data: `form`'s fields, then the file part named `filename`
    holding `body`'s bytes, then the closing boundary. `len` is what remains to be read."""

    def __init__(self, form: Mapping[str, str], filename: str, body: HashingBody) -> None:
        boundary = os.urandom(16).hex()
        self.content_type = f"multipart/form-data; boundary={boundary}"
        dash = f"--{boundary}\r\n"
        fields = "".join(
            f"{dash}Content-Disposition: form-data; "
            f"{format_multipart_header_param('name', name)}\r\n\r\n{value}\r\n"
            for name, value in form.items()
        )
        head = (
            f"{fields}{dash}Content-Disposition: form-data; "
            f"{format_multipart_header_param('name', 'file')}; "
            f"{format_multipart_header_param('filename', filename)}\r\n\r\n"
        )
        self._head = head.encode()
        self._body = body
        self._tail = f"\r\n--{boundary}--\r\n".encode()

    @property
    def len(self) -> int:
        return len(self._head) + self._body.len + len(self._tail)

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (all that is left when `n` < 0), across the pieces."""
        want = self.len if n is None or n < 0 else n
        pieces: list[bytes] = []
        while want > 0:
            if self._head:
                piece, self._head = self._head[:want], self._head[want:]
            elif self._body.len:
                piece = self._body.read(want)
            elif self._tail:
                piece, self._tail = self._tail[:want], self._tail[want:]
            else:
                break
            pieces.append(piece)
            want -= len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def file_name(key: str) -> str:
    """The file name the form gives the file part: the key's last segment."""
    return key.rsplit("/", 1)[-1] or "file"
