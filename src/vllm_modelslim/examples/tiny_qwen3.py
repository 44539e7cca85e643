"""The project's tiny Qwen3 demo model: its shape, its training, and where the trained copy lives.

The trained model is committed with the package (``examples/demo_model``:
bf16 weights, tokenizer, ``training.json``), so the demo and the tests start
from a model that writes readable English without training anything.
``scripts/train_demo_model.py`` rebuilds it: a byte-level BPE tokenizer
(4096 tokens, ``tokenizers``) and a ~5M-parameter Qwen3 (4 layers, hidden 256)
trained from a fixed seed for about 12 minutes on two cores, on the Python
documentation shipped by Debian's ``python3.11-doc`` package
(:mod:`~vllm_modelslim.examples.demo_corpus`) plus the docstrings of
:data:`CORPUS_MODULES`. The docstrings of :data:`HELD_OUT_MODULES` (and those
modules' documentation pages) are never trained on: they are the held-out
evaluation text, available on any machine with Python.

The folder is a normal Hugging Face checkpoint (``config.json``,
``model.safetensors``, ``tokenizer.json`` and the slow-tokenizer files
``vocab.json``/``merges.txt`` that msmodelslim loads with ``use_fast=False``).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Standard-library modules whose docstrings are part of the training text and
# are the msmodelslim calibration text. A fixed, ordered list keeps the corpus
# the same from run to run on one Python version.
CORPUS_MODULES: tuple[str, ...] = (
    "os",
    "re",
    "json",
    "collections",
    "itertools",
    "functools",
    "pathlib",
    "argparse",
    "logging",
    "unittest",
    "email",
    "http.client",
    "urllib.request",
    "datetime",
    "decimal",
    "fractions",
    "statistics",
    "random",
    "string",
    "textwrap",
    "typing",
    "dataclasses",
    "enum",
    "inspect",
    "threading",
    "subprocess",
    "socket",
    "asyncio",
    "csv",
    "sqlite3",
    "zipfile",
    "tarfile",
    "shutil",
    "tempfile",
    "pickle",
    "copy",
    "heapq",
    "bisect",
    "math",
    "cmath",
    "calendar",
    "locale",
    "gettext",
    "difflib",
    "pprint",
    "doctest",
    "pdb",
    "trace",
    "timeit",
    "contextlib",
    "abc",
    "io",
    "codecs",
    "struct",
    "array",
    "queue",
    "sched",
    "select",
    "signal",
    "mmap",
    "hashlib",
    "hmac",
    "secrets",
    "base64",
    "binascii",
    "html",
    "xml.dom.minidom",
    "configparser",
    "plistlib",
    "imaplib",
    "smtplib",
    "ftplib",
    "poplib",
    "wave",
    "colorsys",
    "cmd",
    "shlex",
)

END_OF_TEXT = "<|endoftext|>"


@dataclass(frozen=True)
class TinyQwen3Spec:
    """Shape and training budget of the demo model.

    The defaults give a ~5.2M-parameter Qwen3 (4 layers, hidden 256, 4 query
    heads and 2 KV heads of dim 64) with a 4096-token vocabulary, trained for
    ``train_steps`` AdamW steps of ``train_batch`` × ``train_seq_len`` tokens
    (learning rate warmed up linearly for ``warmup_steps``, then a cosine
    decay to a tenth).
    """

    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    max_position_embeddings: int = 2048
    train_steps: int = 540
    train_batch: int = 16
    train_seq_len: int = 256
    learning_rate: float = 2e-3
    warmup_steps: int = 30
    seed: int = 0


DEMO_MODEL_DIR = Path(__file__).parent / "demo_model"
"""The committed, trained demo model (rebuilt by ``scripts/train_demo_model.py``)."""


def corpus_texts(min_chars: int = 40) -> list[str]:
    """Distinct docstrings of the public classes and functions of :data:`CORPUS_MODULES`, in a fixed order.

    Only objects defined by the module itself (or its C accelerator, e.g.
    ``_socket`` for ``socket``) count: names other code patches in at run time
    (pytest replaces ``pdb.set_trace`` and ``threading.excepthook``, for
    example) would make the corpus, hence the tokenizer and the model, depend
    on the caller. Constants are skipped (their "docstring" is their type's).
    """
    texts: list[str] = []
    seen: set[str] = set()
    for module_name in CORPUS_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for name, obj in sorted(vars(module).items()):
            owner = getattr(obj, "__module__", None)
            if name.startswith("_") or not isinstance(owner, str):
                continue
            if owner.lstrip("_") != module.__name__ or owner.partition(".")[0] not in sys.stdlib_module_names:
                continue
            doc = inspect.getdoc(obj)
            if doc and len(doc) > min_chars and doc not in seen:
                seen.add(doc)
                texts.append(doc)
    return texts


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: Path) -> None:
    """Train a byte-level BPE and save it in fast and slow formats to ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        bos_token=None,
    )
    fast.save_pretrained(str(out_dir))
    # msmodelslim loads the tokenizer with use_fast=False: it needs the slow
    # GPT-2 style files too.
    tokenizer.model.save(str(out_dir))
    config_path = out_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "Qwen2Tokenizer"
    config_path.write_text(json.dumps(config, indent=2))


def build_tiny_qwen3(
    out_dir: Path,
    documents: list[str],
    spec: TinyQwen3Spec | None = None,
    progress: Callable[[str], None] | None = None,
    provenance: dict[str, str] | None = None,
) -> dict[str, object]:
    """Train the tokenizer and the model on ``documents`` and save them into ``out_dir``.

    Args:
        out_dir: folder to create; it is replaced if it exists (the new one is
            written next to it and renamed when complete).
        documents: training text, one string per document; an end-of-text
            token separates documents in the token stream.
        spec: model shape and training budget (defaults: :class:`TinyQwen3Spec`).
        progress: optional callback receiving one-line status messages.
        provenance: where ``documents`` came from (e.g. the source archive's
            name and SHA-256), recorded as given.

    Returns:
        Training facts (token count, epochs, final mean loss, seconds, the
        SHA-256 of the documents), also written to ``out_dir/training.json``
        with the spec and ``provenance``.
    """
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    spec = spec or TinyQwen3Spec()
    say = progress or (lambda _msg: None)
    out_dir = Path(out_dir)
    tmp_dir = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir(parents=True)

    say(f"training a {spec.vocab_size}-token BPE tokenizer on {len(documents)} documents")
    train_tokenizer(documents, spec.vocab_size, tmp_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_dir))
    eos_id = tokenizer.convert_tokens_to_ids(END_OF_TEXT)

    config = Qwen3Config(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=False,
        rope_theta=1_000_000.0,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    torch.manual_seed(spec.seed)
    model = Qwen3ForCausalLM(config)

    ids: list[int] = []
    for text in documents:
        ids.extend(tokenizer(text)["input_ids"])
        ids.append(eos_id)
    stream = torch.tensor(ids, dtype=torch.long)
    trained_tokens = spec.train_steps * spec.train_batch * spec.train_seq_len
    say(
        f"training the model for {spec.train_steps} steps on {len(ids)} tokens "
        f"({trained_tokens / len(ids):.2f} epochs)"
    )
    start = time.perf_counter()
    final_loss = _train(model, stream, spec, say)
    facts: dict[str, object] = {
        **(provenance or {}),
        "corpus_sha256": hashlib.sha256("\x00".join(documents).encode()).hexdigest(),
        "corpus_tokens": len(ids),
        "documents": len(documents),
        "epochs": round(trained_tokens / len(ids), 3),
        "final_mean_loss": round(final_loss, 4),
        "train_seconds": round(time.perf_counter() - start, 1),
        "torch": torch.__version__,
        "spec": asdict(spec),
    }

    model = model.to(torch.bfloat16).eval()
    model.save_pretrained(str(tmp_dir), safe_serialization=True)
    _write_legacy_config_keys(tmp_dir / "config.json")
    (tmp_dir / "training.json").write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp_dir.rename(out_dir)
    return facts


def _learning_rate(step: int, spec: TinyQwen3Spec) -> float:
    if step < spec.warmup_steps:
        return spec.learning_rate * (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, spec.train_steps - spec.warmup_steps)
    return spec.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _train(
    model: torch.nn.Module,
    stream: torch.Tensor,
    spec: TinyQwen3Spec,
    say: Callable[[str], None],
) -> float:
    """AdamW on random windows of ``stream``; returns the mean loss of the last 20 steps."""
    generator = torch.Generator().manual_seed(spec.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.01)
    model.train()
    span = spec.train_seq_len
    recent: list[float] = []
    for step in range(spec.train_steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, spec)
        starts = torch.randint(0, len(stream) - span - 1, (spec.train_batch,), generator=generator)
        batch = torch.stack([stream[s : s + span] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        recent = (recent + [loss.item()])[-20:]
        if (step + 1) % 20 == 0 or step + 1 == spec.train_steps:
            say(f"  step {step + 1}/{spec.train_steps}  loss {sum(recent) / len(recent):.3f}")
    model.eval()
    return sum(recent) / len(recent)


def _write_legacy_config_keys(config_path: Path) -> None:
    """Add the pre-5.x key names (``rope_theta``) that older tools read."""
    config = json.loads(config_path.read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" not in config and "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


def demo_model_dir() -> Path:
    """The committed, trained demo model (:data:`DEMO_MODEL_DIR`).

    Raises:
        FileNotFoundError: the folder or its weights are missing (a source
            tree without them): rebuild with ``python scripts/train_demo_model.py``.
    """
    if not (DEMO_MODEL_DIR / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{DEMO_MODEL_DIR}: the trained demo model is missing; rebuild it with "
            "`python scripts/train_demo_model.py`"
        )
    return DEMO_MODEL_DIR


HELD_OUT_MODULES: tuple[str, ...] = (
    "glob", "fnmatch", "uuid", "gzip", "operator", "weakref", "getpass", "netrc", "ssl",
    "ipaddress", "shelve", "filecmp", "linecache", "numbers", "reprlib", "zlib",
    "tokenize", "stat", "quopri", "graphlib", "zipimport", "compileall", "pkgutil",
    "runpy", "site", "sysconfig", "traceback", "warnings", "webbrowser",
)  # fmt: skip
"""Modules whose docstrings and documentation pages the demo model never trained on (evaluation text)."""


def held_out_texts(count: int = 8, min_chars: int = 150) -> list[str]:
    """Module docstrings from :data:`HELD_OUT_MODULES` (held-out English text), in order."""
    texts = []
    for module_name in HELD_OUT_MODULES:
        try:
            doc = inspect.getdoc(importlib.import_module(module_name))
        except ImportError:
            continue
        if doc and len(doc) >= min_chars:
            texts.append(doc)
    return texts[:count]
