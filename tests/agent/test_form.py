"""agent/form.py: the POST's multipart/form-data body, read back as a server parses it."""

from __future__ import annotations

import email.parser
import email.policy
import io

import pytest

from agent.body import HashingBody
from agent.form import FormBody

FORM = {"key": 'runs/1/é "q".csv', "policy": "eyJ9", "x-amz-signature": "ff", "acl": "private"}


def read_all(body: FormBody, block: int) -> bytes:
    out = b""
    while chunk := body.read(block):
        out += chunk
    return out


@pytest.mark.parametrize(
    ("size", "block"),
    [(0, 1), (4096, 1), (0, 1024 * 1024), (4096, 1000), (4096, 1024 * 1024),
     (3 * 1024 * 1024 + 7, 1000), (3 * 1024 * 1024 + 7, 1024 * 1024)],
)  # fmt: skip
def test_the_form_reads_back_as_its_fields_then_the_whole_file_in_any_block_size(
    size: int, block: int
) -> None:
    """Whatever block size the socket asks for, the bytes are the same and as long as said:
    each field, then the file part (its name quoted), then the closing boundary; a server's
    parser finds every field and the file's bytes exactly."""
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    form = FormBody(FORM, 'é "q".csv', HashingBody(io.BytesIO(data), size))
    length = form.len
    raw = read_all(form, block)
    assert len(raw) == length and form.len == 0
    head = f"Content-Type: {form.content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    parts = list(message.iter_parts())
    fields = {p.get_param("name", header="content-disposition"): p for p in parts}
    assert list(fields) == [*FORM, "file"]
    for name, value in FORM.items():
        assert fields[name].get_payload(decode=True).decode() == value
    assert fields["file"].get_payload(decode=True) == data
    assert fields["file"].get_filename() == "é %22q%22.csv"  # HTML5's quoting, as browsers do


def test_a_small_file_goes_out_in_one_write() -> None:
    """The fields, a 4 KiB file and the closing boundary in one block: one send, not three."""
    form = FormBody(FORM, "a.bin", HashingBody(io.BytesIO(b"z" * 4096), 4096))
    first = form.read(1024 * 1024)
    assert first.endswith(b"--\r\n") and form.read(1024 * 1024) == b""
