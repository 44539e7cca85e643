"""The demo model's training text does not depend on who builds it."""

import hashlib
import subprocess
import sys

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
