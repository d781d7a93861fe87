"""Files the ingestion tests make themselves: good documents in several formats, and hostile ones."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path


def make_pdf(lines: list[str]) -> bytes:
    """A minimal valid one-page PDF with a line of Helvetica text per entry."""
    body = " ".join(f"({line}) Tj 0 -16 Td" for line in lines)
    content = f"BT /F1 12 Tf 72 720 Td {body} ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for number, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{obj}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def make_docx(path: Path, heading: str, paragraphs: list[str]) -> Path:
    import docx

    document = docx.Document()
    document.add_heading(heading, level=1)
    for text in paragraphs:
        document.add_paragraph(text)
    document.save(str(path))
    return path


def write_hostile(folder: Path, big_mb: int = 3) -> dict[str, Path]:
    """Hostile files, each named by what it is; returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "truncated_pdf": folder / "truncated.pdf",
        "zip_bomb": folder / "bomb.docx",
        "junk_txt": folder / "junk.txt",
        "empty": folder / "empty.md",
        "big_line": folder / "one-line.txt",
        "not_a_docx": folder / "fake.docx",
    }
    files["truncated_pdf"].write_bytes(make_pdf(["never complete"])[:200])
    with zipfile.ZipFile(files["zip_bomb"], "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("[Content_Types].xml", b"<Types/>")
        zf.writestr("word/document.xml", b"\0" * (64 * 2**20))  # 64 MiB of zeros, ~64 KiB on disk
    files["junk_txt"].write_bytes(os.urandom(50_000))
    files["empty"].write_bytes(b"")
    files["big_line"].write_bytes(b"x" * (big_mb * 2**20))
    files["not_a_docx"].write_bytes(b"this is plain text pretending to be a docx")
    return files


def write_good(folder: Path) -> dict[str, Path]:
    """Good documents in odd encodings and with hostile-looking names; each has a unique marker word."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "utf16": folder / "utf16.txt",
        "latin1": folder / "latin1.md",
        "traversal": folder / "notes..%2f..%2fetc%2fpasswd.md",
        "pdf": folder / "paper.pdf",
        "docx": folder / "report.docx",
    }
    files["utf16"].write_bytes("Zebrafish habitats are described in this UTF-16 note.\n".encode("utf-16"))
    files["latin1"].write_bytes("# Überblick\n\nDie Quokkas können springen.\n".encode("latin-1"))
    files["traversal"].write_text("# Odd name\n\nPangolins are covered in scales.\n")
    files["pdf"].write_bytes(make_pdf(["Narwhals have a single long tusk.", "They live in Arctic waters."]))
    make_docx(files["docx"], "Axolotl care", ["Axolotls regenerate their limbs."])
    return files
