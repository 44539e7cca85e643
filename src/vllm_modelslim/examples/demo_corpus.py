"""Training text of the demo model: the Python documentation from Debian's ``python3.11-doc`` package.

The package (an ordinary Debian archive, ~12 MB, fetched with
``apt-get download``) ships the reStructuredText sources of the Python
documentation under ``usr/share/doc/python3.11/html/_sources``. The tutorial,
HOWTOs, FAQ, language reference, glossary and library reference are turned
into plain English paragraphs by :func:`rst_to_text` (markup roles unwrapped,
code, tables and bookkeeping directives dropped). The library pages of
:data:`~vllm_modelslim.examples.tiny_qwen3.HELD_OUT_MODULES` are left out, so
the docstrings of those modules stay held-out evaluation text.

This module is used only to rebuild the committed demo model
(``scripts/train_demo_model.py``); the runtime never needs the package.
"""

from __future__ import annotations

import hashlib
import io
import re
import subprocess
import tarfile
from pathlib import Path

DOC_PACKAGE = "python3.11-doc"
SOURCES_PREFIX = "usr/share/doc/python3.11/html/_sources/"
TRAINING_SECTIONS: tuple[str, ...] = ("tutorial", "howto", "faq", "reference", "library", "glossary")

# Directives whose indented body is English prose about the thing they name.
_PROSE_DIRECTIVES = frozenset(
    {
        "function", "class", "method", "classmethod", "staticmethod", "attribute", "data",
        "exception", "decorator", "decoratormethod", "describe", "opcode", "option", "envvar",
        "note", "warning", "seealso", "versionadded", "versionchanged", "deprecated",
        "deprecated-removed", "impl-detail", "glossary", "topic", "tip", "important",
        "attention", "caution", "hint", "admonition", "abstractmethod", "coroutinefunction",
        "coroutinemethod", "awaitable", "cmdoption",
    }
)  # fmt: skip
_ROLE = re.compile(r":[a-zA-Z:+-]+:`~?!?([^`<]*?)(?:\s*<[^`>]*>)?`")
_LITERAL = re.compile(r"``([^`]+)``")
_LINK = re.compile(r"`([^`<]+?)\s*<[^`>]*>`__?")
_INTERPRETED = re.compile(r"`([^`]+)`_{0,2}")
_STRONG = re.compile(r"\*\*([^*]+)\*\*")
_EMPHASIS = re.compile(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])")
_UNDERLINE = re.compile(r"^([=\-~^*+#\"'`.:_])\1{2,}\s*$")
_TABLE = re.compile(r"^\s*(\+[-=+]+\+|=+(\s+=+)+|\|)")


def download_doc_package(dest_dir: Path) -> Path:
    """Fetch Debian's ``python3.11-doc`` archive with ``apt-get download`` into ``dest_dir``.

    Returns:
        The path of the ``.deb`` file.

    Raises:
        RuntimeError: ``apt-get`` is missing or the download failed (pass the
            archive with ``--deb`` instead).
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["apt-get", "download", DOC_PACKAGE], cwd=dest_dir, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(f"apt-get download {DOC_PACKAGE} failed in {dest_dir}: {exc}") from exc
    debs = sorted(dest_dir.glob(f"{DOC_PACKAGE}_*.deb"))
    if not debs:
        raise RuntimeError(f"apt-get download {DOC_PACKAGE} wrote no archive into {dest_dir}")
    return debs[-1]


def read_deb_sources(deb_path: Path) -> dict[str, str]:
    """The documentation sources in a Debian archive, ``{path under _sources: text}``.

    A ``.deb`` is an ``ar`` archive whose ``data.tar.*`` member holds the
    files; it is read with the standard library alone.

    Raises:
        ValueError: the file is not a Debian archive or holds no sources.
    """
    blob = Path(deb_path).read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise ValueError(f"{deb_path}: not a Debian archive (no ar signature)")
    offset, data = 8, None
    while offset + 60 <= len(blob):
        header = blob[offset : offset + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        if name.startswith("data.tar"):
            data = blob[offset + 60 : offset + 60 + size]
            break
        offset += 60 + size + (size % 2)
    if data is None:
        raise ValueError(f"{deb_path}: no data.tar member")
    sources: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            path = member.name.removeprefix("./")
            if member.isfile() and path.startswith(SOURCES_PREFIX) and path.endswith(".rst.txt"):
                extracted = tar.extractfile(member)
                if extracted is not None:
                    sources[path[len(SOURCES_PREFIX) :]] = extracted.read().decode("utf-8")
    if not sources:
        raise ValueError(f"{deb_path}: no files under {SOURCES_PREFIX}")
    return sources


_FOOTNOTE = re.compile(r"\s*\[#\w*\]_")
_SUBSTITUTION = re.compile(r"\|([\w-]+)\|")


def _inline(text: str) -> str:
    text = _FOOTNOTE.sub("", text)
    for pattern in (_SUBSTITUTION, _ROLE, _LITERAL, _LINK, _INTERPRETED, _STRONG, _EMPHASIS):
        text = pattern.sub(r"\1", text)
    return text.replace("\\", "")


def rst_to_text(rst: str) -> str:
    """Plain English paragraphs of a reStructuredText page, one paragraph per line.

    Kept: paragraphs, list items and the bodies of prose directives
    (``function``, ``note``, ...), with roles and inline markup unwrapped
    (``:func:`os.scandir``` becomes ``os.scandir``). Dropped: section
    underlines, comments and other directives with their bodies, literal
    blocks (after ``::``), doctest paragraphs (``>>>``), tables and field lists.
    """
    paragraphs: list[str] = []
    current: list[str] = []
    skip_deeper_than: int | None = None

    def flush() -> None:
        if current:
            paragraph = " ".join(current)
            if not paragraph.startswith((">>>", "...")) and len(paragraph) > 1:
                paragraphs.append(_inline(paragraph))
            current.clear()

    for raw in rst.splitlines():
        line = raw.rstrip()
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if skip_deeper_than is not None:
            if not stripped or indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        if not stripped:
            flush()
            continue
        if _UNDERLINE.match(line) or _TABLE.match(line):
            flush()
            continue
        if stripped.startswith(".."):
            flush()
            directive = re.match(r"\.\.\s+([\w-]+)::", stripped)
            if not (directive and directive.group(1) in _PROSE_DIRECTIVES):
                skip_deeper_than = indent
            else:
                # the rest of the head line (a signature or a version) is not prose
                after = stripped[directive.end() :].strip()
                if directive.group(1) in ("note", "warning", "seealso", "tip", "important") and after:
                    current.append(after)
            continue
        if re.match(r":[\w -]+:(\s|$)", stripped):
            flush()
            continue
        current.append(stripped)
        if stripped.endswith("::"):
            current[-1] = stripped[:-2].rstrip() + (":" if stripped[:-2].strip() else "")
            if not current[-1]:
                current.pop()
            flush()
            skip_deeper_than = indent
    flush()
    return "\n".join(p for p in paragraphs if re.search(r"[a-z]{3}", p))


def training_documents(deb_path: Path, held_out_modules: tuple[str, ...]) -> list[str]:
    """The cleaned pages of :data:`TRAINING_SECTIONS`, in path order, without held-out modules' pages.

    Args:
        deb_path: the ``python3.11-doc`` archive.
        held_out_modules: module names whose ``library/<name>.rst.txt`` page is skipped.

    Returns:
        One string per page (paragraphs separated by newlines); empty pages are dropped.
    """
    held_out = {f"library/{name}.rst.txt" for name in held_out_modules}
    documents = []
    for path, rst in sorted(read_deb_sources(deb_path).items()):
        section = path.split("/", 1)[0].removesuffix(".rst.txt")
        if section not in TRAINING_SECTIONS or path in held_out:
            continue
        text = rst_to_text(rst)
        if text:
            documents.append(text)
    return documents


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file (recorded with the model to identify its training text)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
