"""The demo model's training text: stdlib docstrings (also the calibration text) and the Python docs."""

import hashlib
import io
import subprocess
import sys
import tarfile

import pytest

from vllm_modelslim.examples.demo_corpus import (
    SOURCES_PREFIX,
    read_deb_sources,
    rst_to_text,
    training_documents,
)
from vllm_modelslim.examples.tiny_qwen3 import CORPUS_MODULES, HELD_OUT_MODULES, corpus_texts


def digest(texts):
    return hashlib.sha256("\x00".join(texts).encode()).hexdigest()


def test_corpus_is_the_same_under_pytest_and_in_a_plain_interpreter():
    # pytest patches pdb.set_trace and threading.excepthook; the corpus must not see that.
    code = (
        "import hashlib; from vllm_modelslim.examples.tiny_qwen3 import corpus_texts; "
        "print(hashlib.sha256('\\x00'.join(corpus_texts()).encode()).hexdigest())"
    )
    plain = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    texts = corpus_texts()
    assert plain == digest(texts)
    assert len(texts) > 500 and len(set(texts)) == len(texts)


def test_held_out_modules_are_not_training_text():
    assert not set(CORPUS_MODULES) & set(HELD_OUT_MODULES)


# --- the Python-documentation training text (Debian's python3.11-doc) ---

PAGE = """\
.. _tut-lists:

:mod:`glob` --- Unix style pathname pattern expansion
=====================================================

.. index:: single: filenames; pathname expansion

The :mod:`glob` module finds all the pathnames matching a *specified* pattern,
using :func:`os.scandir` and :func:`fnmatch.fnmatch <fnmatch>` in concert [#]_.
Call ``glob.glob(path)``.

For example::

   >>> glob.glob('*.gif')
   ['card.gif']

.. function:: glob(pathname, *, recursive=False)

   Return a possibly empty list of path names that match **pathname**.

   .. versionchanged:: 3.11
      Added the *include_hidden* parameter.

.. code-block:: python

   print("not prose")

+------+------+
| a    | b    |
+------+------+

>>> 1 + 1
2

.. note:: Hidden files are not matched.
"""


def test_rst_to_text_keeps_prose_and_drops_markup_code_and_tables():
    text = rst_to_text(PAGE)
    assert text.splitlines() == [
        "glob --- Unix style pathname pattern expansion",
        "The glob module finds all the pathnames matching a specified pattern, "
        "using os.scandir and fnmatch.fnmatch in concert. Call glob.glob(path).",
        "For example:",
        "Return a possibly empty list of path names that match pathname.",
        "Added the include_hidden parameter.",
        "Hidden files are not matched.",
    ]


def _deb(tmp_path, files: dict[str, str]):
    """A minimal Debian archive: ar signature, debian-binary, data.tar.xz with ``files``."""
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w:xz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    members = [(b"debian-binary", b"2.0\n"), (b"data.tar.xz", tar_bytes.getvalue())]
    blob = b"!<arch>\n"
    for name, data in members:
        header = name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) * 2 + b"100644".ljust(8)
        blob += header + str(len(data)).encode().ljust(10) + b"`\n" + data + (b"\n" if len(data) % 2 else b"")
    path = tmp_path / "python3.11-doc_test_all.deb"
    path.write_bytes(blob)
    return path


def test_training_documents_read_the_archive_and_leave_out_held_out_pages(tmp_path):
    deb = _deb(
        tmp_path,
        {
            SOURCES_PREFIX + "library/glob.rst.txt": PAGE,
            SOURCES_PREFIX + "library/os.rst.txt": "The os module is portable.\n",
            SOURCES_PREFIX + "c-api/intro.rst.txt": "Not a training section.\n",
            "usr/share/doc/python3.11/changelog.txt": "Not a source.\n",
        },
    )
    assert set(read_deb_sources(deb)) == {"library/glob.rst.txt", "library/os.rst.txt", "c-api/intro.rst.txt"}
    assert training_documents(deb, ("glob",)) == ["The os module is portable."]
    assert len(training_documents(deb, ())) == 2


def test_a_file_that_is_not_a_debian_archive_is_refused(tmp_path):
    path = tmp_path / "x.deb"
    path.write_bytes(b"PK\x03\x04 not an ar archive")
    with pytest.raises(ValueError, match="not a Debian archive"):
        read_deb_sources(path)


def test_a_failed_package_download_names_the_package_and_folder(tmp_path, monkeypatch):
    from vllm_modelslim.examples.demo_corpus import download_doc_package

    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get
    with pytest.raises(RuntimeError, match=rf"apt-get download python3.11-doc failed in {tmp_path}"):
        download_doc_package(tmp_path)
