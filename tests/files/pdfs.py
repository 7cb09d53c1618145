"""Small real PDFs with text, written by hand (pypdf writes no text of its own)."""

from __future__ import annotations


def pdf_with_pages(*texts: str) -> bytes:
    """A PDF with one page per text, in Helvetica, with a correct cross-reference table.

    A text's lines (``\\n``) are lines on its page, top down. No escaping:
    leave parentheses and backslashes out.
    """
    objects: list[bytes] = []
    count = len(texts)
    # 1: catalog, 2: pages, 3: font, then a page and its content stream per text.
    kids = " ".join(f"{4 + 2 * index} 0 R" for index in range(count))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {count} >>".encode())
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    for index, text in enumerate(texts):
        # The first line at the top left, each next one 22 points lower.
        lines = " 0 -22 Td ".join(f"({line}) Tj" for line in text.split("\n"))
        content = f"BT /F1 18 Tf 72 720 Td {lines} ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * index} 0 R >>".encode()
        )
        objects.append(
            f"<< /Length {len(content)} >>\nstream\n".encode() + content + b"\nendstream"
        )
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n"
    ).encode()
    return bytes(out)
