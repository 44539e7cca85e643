"""Rebuild the committed demo model (src/vllm_modelslim/examples/demo_model) from scratch.

    .venv/bin/python scripts/train_demo_model.py                 # fetches python3.11-doc with apt-get
    .venv/bin/python scripts/train_demo_model.py --deb path/to/python3.11-doc_*.deb --out /tmp/demo

Training text: the Python documentation in Debian's python3.11-doc package
(tutorial, HOWTOs, FAQ, reference, glossary, library pages except the held-out
modules') and the docstrings of CORPUS_MODULES. Fixed seed; about 12 minutes
on two cores. Writes training.json (corpus and archive digests, token counts,
final loss, seconds) next to the weights, and prints greedy continuations of a
few prompts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from vllm_modelslim.examples.demo_corpus import download_doc_package, sha256_of, training_documents
from vllm_modelslim.examples.tiny_qwen3 import (
    DEMO_MODEL_DIR,
    HELD_OUT_MODULES,
    TinyQwen3Spec,
    build_tiny_qwen3,
    corpus_texts,
)

PROMPTS = (
    "The list data type has",
    "A dictionary is",
    "To open a file for reading,",
    "The exception is raised when",
)


def main() -> None:
    """Fetch the text, train, save, print sample continuations."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--deb", type=Path, help="python3.11-doc .deb (default: apt-get download it)")
    parser.add_argument("--out", type=Path, default=DEMO_MODEL_DIR, help="output folder")
    parser.add_argument("--steps", type=int, default=TinyQwen3Spec().train_steps)
    args = parser.parse_args()

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        deb = args.deb or download_doc_package(Path(tmp))
        documents = training_documents(deb, HELD_OUT_MODULES) + corpus_texts()
        deb_digest = sha256_of(deb)
    print(f"{len(documents)} documents, {sum(map(len, documents)) / 1e6:.2f} M characters from {deb.name}")
    spec = TinyQwen3Spec(train_steps=args.steps)
    provenance = {"doc_package": deb.name, "doc_package_sha256": deb_digest}
    facts = build_tiny_qwen3(args.out, documents, spec, progress=print, provenance=provenance)
    print(json.dumps(facts, indent=2))

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(args.out))
    model = AutoModelForCausalLM.from_pretrained(str(args.out), dtype=torch.float32)
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=40, do_sample=False)
        print(repr(prompt + tokenizer.decode(out[0, ids.shape[1] :])))


if __name__ == "__main__":
    main()
