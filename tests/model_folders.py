"""Facts of a model folder that tests compare against (read from its config.json)."""

import json
from pathlib import Path


def layer_count(folder) -> int:
    """``num_hidden_layers`` of the Hugging Face model in ``folder``."""
    return json.loads((Path(folder) / "config.json").read_text())["num_hidden_layers"]
