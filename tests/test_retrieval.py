"""Image-text retrieval: a tiny Blip2ForImageTextRetrieval checkpoint exported, served by a real
tritonserver, compared with transformers; the image index and its CLI; bad inputs."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient

from blip2_triton.client import AsyncBlip2Client, Blip2Client, InvalidRequestError
from blip2_triton.client.index import PARTIAL_SUFFIX, ImageIndex, dequantize, quantize, top_indices
from blip2_triton.export.configs import validate_repository
from blip2_triton.export.manifest import verify_manifest
from blip2_triton.runtime.images import decode_image

from .conftest import start_server
from .parity import FIGURES, QUEUE_DELAY_US
from .triton_requests import Outcome, assert_rejected, batch_statistics

pytestmark = pytest.mark.server

IMAGE_SIZE = 56  # not the tiny default (64): exports take the size the checkpoint declares
TEXTS = (
    "a dog on the beach",
    "two red cars near a house",
    "a photo of a small cat sitting on a table",
    "what is this",
    "the sky",
)
MODELS = {
    "blip2_preprocess",
    "blip2_image_encoder",
    "blip2_image_embed",
    "blip2_text_embed",
    "blip2_itm_head",
    "blip2_itm",
}
TOLERANCE = 1e-4
CLI = [sys.executable, "-m", "blip2_triton.cli"]


class RetrievalReference:
    """``Blip2Processor`` + ``Blip2ForImageTextRetrieval.forward``: the ground truth."""

    def __init__(self, checkpoint: Path) -> None:
        from transformers import Blip2ForImageTextRetrieval, Blip2Processor

        self.processor = Blip2Processor.from_pretrained(checkpoint)
        self.model = Blip2ForImageTextRetrieval.from_pretrained(checkpoint).eval()

    def pairs(self, images: list[bytes], text: str, **text_kwargs) -> dict[str, np.ndarray]:
        """Every image with ``text``: image_embeds [N,Q,D], text_embeds [D], itc [N], itm [N]."""
        pil = [decode_image(data) for data in images]
        inputs = self.processor(images=pil, text=[text] * len(pil), return_tensors="pt", **text_kwargs)
        with torch.inference_mode():
            itc = self.model(**inputs, use_image_text_matching_head=False)
            itm = self.model(**inputs, use_image_text_matching_head=True)
        return {
            "image_embeds": itc.image_embeds.numpy(),
            "text_embeds": itc.text_embeds[0].numpy(),
            # logits_per_image [images, texts]: max over queries of the cosine, no temperature;
            # the texts are all the same here, so any column.
            "itc": itc.logits_per_image[:, 0].numpy(),
            "itm": itm.logits_per_image.softmax(dim=1)[:, 1].numpy(),
        }


@pytest.fixture(scope="module")
def retrieval_build(tmp_path_factory) -> dict[str, Path]:
    """Tiny retrieval checkpoint -> export -> moved elsewhere, checkpoint deleted (copy kept aside)."""
    from blip2_triton.export.repository import ExportOptions, export_repository
    from blip2_triton.fixtures.tiny_checkpoints import build_tiny_checkpoint

    base = tmp_path_factory.mktemp("retrieval")
    checkpoint = build_tiny_checkpoint(base / "checkpoint", "retrieval", image_size=IMAGE_SIZE)
    reference_copy = shutil.copytree(checkpoint, base / "reference_checkpoint")
    exported = base / "exported"
    options = ExportOptions(max_batch_size=8, queue_delay_us=QUEUE_DELAY_US)
    manifest = export_repository(str(checkpoint), exported, options, quiet=True)
    moved = base / "moved" / "repository"
    moved.parent.mkdir()
    shutil.move(exported, moved)
    shutil.rmtree(checkpoint)
    return {"repository": moved, "reference_checkpoint": reference_copy, "manifest": manifest}


@pytest.fixture(scope="module")
def reference(retrieval_build) -> RetrievalReference:
    return RetrievalReference(retrieval_build["reference_checkpoint"])


@pytest.fixture(scope="module")
def server(retrieval_build, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "retrieval-server.log"
    served = start_server(retrieval_build["repository"], log)
    try:
        yield served
    finally:
        served.stop()
    # A request left in flight (as Triton 2.51 ensembles leave one whose parallel branch failed)
    # shows at shutdown; none may be.
    stuck = [
        line for line in log.read_text().splitlines() if re.search(r"has \d+ in-flight inferences", line)
    ]
    assert not stuck, stuck[:1]


@pytest.fixture(scope="module")
def client(server):
    with Blip2Client(server.grpc_url, inference_timeout_s=120.0) as connected:
        yield connected


@pytest.fixture(scope="module")
def images(sample_images) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sample_images}


@pytest.fixture(scope="module")
def expected(reference, images) -> dict[str, dict[str, np.ndarray]]:
    return {text: reference.pairs(list(images.values()), text) for text in TEXTS}


@pytest.fixture(scope="module")
def errors() -> dict[str, float]:
    """Max abs error per quantity, filled by the tests, written to .work/figures/retrieval.json."""
    seen: dict[str, float] = {}
    yield seen
    if seen:
        figures = {"max_abs_error": max(seen.values()), "by_quantity": seen, "tolerance": TOLERANCE}
        FIGURES.mkdir(parents=True, exist_ok=True)
        (FIGURES / "retrieval.json").write_text(json.dumps(figures, indent=2) + "\n")
        print("\nretrieval max abs error:", json.dumps(figures))


def _record(errors: dict[str, float], name: str, actual, wanted) -> float:
    diff = float(np.max(np.abs(np.asarray(actual, np.float64) - np.asarray(wanted, np.float64))))
    errors[name] = max(errors.get(name, 0.0), diff)
    return diff


# -- export ----------------------------------------------------------------------------------------


def test_export_is_validated_relocatable_and_recorded(retrieval_build):
    repository, manifest = retrieval_build["repository"], retrieval_build["manifest"]
    models = validate_repository(repository)
    assert set(models) == MODELS
    for name, config in models.items():
        assert config.max_batch_size == 8, name
        if config.platform != "ensemble":
            assert config.dynamic_batching.max_queue_delay_microseconds == QUEUE_DELAY_US, name
        assert "${" not in (repository / name / "config.pbtxt").read_text()
    dims = {t.name: list(t.dims) for t in (*models["blip2_itm"].input, *models["blip2_itm"].output)}
    assert dims == {"image": [1], "text_input": [1], "itm_score": [1], "itc_score": [1]}
    assert [list(t.dims) for t in models["blip2_image_embed"].output] == [[8, 16]]
    assert [list(t.dims) for t in models["blip2_text_embed"].output] == [[16]]
    assert list(models["blip2_preprocess"].output[0].dims) == [3, IMAGE_SIZE, IMAGE_SIZE]
    assert manifest["architecture"] == "Blip2ForImageTextRetrieval"
    assert set(manifest["onnx_max_abs_diff"]) == {"image", "text", "itm"}
    assert max(manifest["onnx_max_abs_diff"].values()) <= TOLERANCE
    assert manifest["text"]["max_text_tokens"] == 64  # the Q-Former's positions
    assert verify_manifest(repository) == []


def test_other_dtypes_are_refused_and_the_native_encoder_config_validates(retrieval_build, tmp_path):
    from blip2_triton.export.configs import (
        check_model_config,
        parse_config,
        render,
        template_dir,
        tensor_values,
    )
    from blip2_triton.export.errors import ExportError
    from blip2_triton.export.repository import ExportOptions, export_repository

    checkpoint = str(retrieval_build["reference_checkpoint"])
    with pytest.raises(ExportError, match="--dtype bf16 is not supported for Blip2ForImageTextRetrieval"):
        export_repository(checkpoint, tmp_path / "bf16", ExportOptions(dtype="bf16"), quiet=True)
    assert not (tmp_path / "bf16").exists()
    template = template_dir() / "blip2_image_encoder" / "config.onnxruntime.pbtxt.tmpl"
    values = {
        "max_batch_size": 8,
        "queue_delay_us": 100,
        "max_queue_size": 32,
        "queue_timeout_us": 30_000_000,
        "image_height": 364,
        "image_width": 364,
        "num_query_tokens": 32,
        "embed_dim": 256,
        "vision_tokens": 677,
        "vision_hidden": 1408,
        "encoder_instance_kind": "KIND_GPU",
    }
    values.update(tensor_values("blip2_image_encoder", values))  # its tensor lines, from the contract
    config = parse_config(render(template.read_text(), values, source="encoder"), source="encoder")
    check_model_config(config, "blip2_image_encoder")
    assert config.backend == "onnxruntime" and list(config.output[1].dims) == [677, 1408]


# -- served values ---------------------------------------------------------------------------------


def test_served_values_equal_transformers(client, server, images, expected, errors):
    """Embeddings, ITM and ITC of every sample image x every text, requests sent together."""
    names = list(images)
    assert len(names) >= 6 and len(TEXTS) >= 4
    image_embeds = client.embed_images([images[n] for n in names], progress=False)
    text_embeds = client.embed_texts(list(TEXTS), progress=False)
    itm_before = batch_statistics(server.grpc_url, "blip2_itm_head")
    encoder_before = batch_statistics(server.grpc_url, "blip2_image_encoder")
    pairs = [(images[n], text) for text in TEXTS for n in names]
    scores = client.match_batch(pairs, progress=False)
    itm_after = batch_statistics(server.grpc_url, "blip2_itm_head", at_least=itm_before[0] + len(pairs))
    encoder_after = batch_statistics(
        server.grpc_url, "blip2_image_encoder", at_least=encoder_before[0] + len(pairs)
    )

    for t, text in enumerate(TEXTS):
        want = expected[text]
        assert _record(errors, "image_embeds", image_embeds, want["image_embeds"]) <= TOLERANCE
        assert _record(errors, "text_embeds", text_embeds[t], want["text_embeds"]) <= TOLERANCE
        got = np.array(scores[t * len(names) : (t + 1) * len(names)])
        assert _record(errors, "itm_score", got[:, 0], want["itm"]) <= TOLERANCE, text
        assert _record(errors, "itc_score", got[:, 1], want["itc"]) <= TOLERANCE, text
        # The ITC score is the max over queries of the cosine of the served embeddings.
        from_embeds = (image_embeds @ text_embeds[t]).max(axis=1)
        assert np.max(np.abs(from_embeds - got[:, 1])) <= TOLERANCE

    # Different images give different scores (the fixture is not degenerate) ...
    assert np.ptp(expected[TEXTS[0]]["itm"]) > 0.1 and np.ptp(expected[TEXTS[0]]["itc"]) > 0.1
    # ... requests of different text lengths shared batches, and each image was encoded once.
    assert itm_after[0] - itm_before[0] == len(pairs)
    assert itm_after[1] - itm_before[1] < len(pairs), "pairs never shared a batch"
    assert encoder_after[0] - encoder_before[0] == len(pairs), (
        "the vision encoder ran more than once per pair"
    )


def test_long_text_is_truncated_as_the_processor_truncates(client, reference, images, errors):
    text = " ".join(["a large red dog running on the beach near two people"] * 12)  # > 64 tokens
    assert len(reference.processor.tokenizer(text)["input_ids"]) > 64
    queries = reference.model.config.num_query_tokens
    image = images["sky_circle.jpg"]
    want = reference.pairs([image], text, truncation=True, max_length=64 + queries)
    (text_embeds,) = client.embed_texts([text])
    itm, itc = client.match(image, text)
    assert _record(errors, "text_embeds", text_embeds, want["text_embeds"]) <= TOLERANCE
    assert _record(errors, "itm_score", itm, want["itm"][0]) <= TOLERANCE
    assert _record(errors, "itc_score", itc, want["itc"][0]) <= TOLERANCE


def test_async_and_http_clients_give_the_same_values(server, client, images):
    names = list(images)[:4]
    sync = client.embed_images([images[n] for n in names])
    sync_match = client.match(images[names[0]], TEXTS[0])

    async def run():
        async with AsyncBlip2Client(server.grpc_url) as aclient:
            return (
                await aclient.embed_images([images[n] for n in names]),
                await aclient.embed_texts(list(TEXTS)),
                await aclient.match(images[names[0]], TEXTS[0]),
            )

    embeds, texts, scores = asyncio.run(run())
    np.testing.assert_array_equal(embeds, sync)
    np.testing.assert_array_equal(texts, client.embed_texts(list(TEXTS)))
    assert scores == sync_match
    with Blip2Client(server.http_url, protocol="http") as http:
        np.testing.assert_array_equal(http.embed_images([images[n] for n in names]), sync)
        assert http.match(images[names[0]], TEXTS[0]) == sync_match


# -- bad inputs ------------------------------------------------------------------------------------


def _bytes_input(name: str, value: bytes) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[value]], dtype=object))
    return tensor


def _send_together(url: str, model: str, requests: list[dict[str, bytes]], output: str) -> list[Outcome]:
    import queue

    connection = grpcclient.InferenceServerClient(url)
    answers: queue.Queue = queue.Queue()
    try:
        for index, request in enumerate(requests):
            connection.async_infer(
                model,
                [_bytes_input(k, v) for k, v in request.items()],
                callback=lambda result, error, index=index: answers.put((index, result, error)),
                outputs=[grpcclient.InferRequestedOutput(output)],
            )
        outcomes: list = [None] * len(requests)
        for _ in requests:
            index, result, error = answers.get(timeout=120)
            if error is not None:
                outcomes[index] = Outcome(status=error.status(), message=error.message())
            else:
                outcomes[index] = Outcome(text=str(result.as_numpy(output).reshape(-1)[0]))
        return outcomes
    finally:
        connection.close()


def test_bad_images_and_empty_texts_are_invalid_arg(server, images):
    good_image, good_text = images["sky_circle.jpg"], TEXTS[0].encode()
    bad_images = {
        b"": "image is empty",
        b"plain text, no image at all": "not a recognised image format",
        good_image[: len(good_image) // 2]: "truncated or corrupt",
    }
    for data, fragment in bad_images.items():
        for model, extra, output in (
            ("blip2_image_embed", {}, "image_embeds"),
            ("blip2_itm", {"text_input": good_text}, "itm_score"),
        ):
            bad, neighbour = _send_together(
                server.grpc_url, model, [{"image": data, **extra}, {"image": good_image, **extra}], output
            )
            assert_rejected(bad, fragment)
            assert neighbour.status is None, neighbour
    for text in (b"", b"   \n\t "):
        for model, extra, output in (
            ("blip2_text_embed", {}, "text_embeds"),
            ("blip2_itm", {"image": good_image}, "itm_score"),
        ):
            bad, neighbour = _send_together(
                server.grpc_url,
                model,
                [{"text_input": text, **extra}, {"text_input": good_text, **extra}],
                output,
            )
            assert_rejected(bad, "'text_input' is empty")
            assert neighbour.status is None, neighbour
    (bad,) = _send_together(server.grpc_url, "blip2_text_embed", [{"text_input": b"\xff\xfe"}], "text_embeds")
    assert_rejected(bad, "not valid UTF-8")


def test_client_reports_the_failed_item(client, images):
    with pytest.raises(InvalidRequestError, match="'text_input' is empty") as caught:
        client.embed_texts(["a dog", ""])
    assert caught.value.index == 1
    with pytest.raises(InvalidRequestError, match="not a recognised image format") as caught:
        client.embed_images([images["sky_circle.jpg"], b"no image"])
    assert caught.value.index == 1


# -- the index -------------------------------------------------------------------------------------


def _gaps(scores: np.ndarray) -> float:
    ordered = np.sort(scores)
    return float(np.min(np.diff(ordered)))


def test_index_ranks_as_transformers_scores(client, sample_images, expected, tmp_path):
    names = [p.name for p in sample_images]
    path = tmp_path / "index.npz"
    # Resumable: a first build of three images, then the folder; only the others are embedded.
    first = ImageIndex.build(client, sample_images[:3], path)
    assert len(first) == 3
    index = ImageIndex.build(client, sample_images[0].parent, path)
    assert len(index) == len(sample_images) and not index.metadata["skipped"]
    index = ImageIndex.load(path, client=client)
    order = [index.paths.index(str(p.resolve())) for p in sample_images]
    assert index.embeddings.dtype == np.int16

    for text in TEXTS:
        want = expected[text]
        assert _gaps(want["itc"]) > 1e-4 and _gaps(want["itm"]) > 1e-4  # rankings are well defined
        hits = index.search(text, top_k=len(names))
        ranked = [Path(hit.path).name for hit in hits]
        assert ranked == [names[i] for i in np.argsort(-want["itc"], kind="stable")], text
        itc_by_name = dict(zip(names, want["itc"], strict=True))
        assert max(abs(hit.itc - itc_by_name[Path(hit.path).name]) for hit in hits) < 1e-4
        reranked = index.search(text, top_k=3, rerank=len(names))
        assert [Path(h.path).name for h in reranked] == [names[i] for i in np.argsort(-want["itm"])[:3]]
        assert all(h.itm is not None for h in reranked)

    # The stored embeddings are transformers' image embeddings (int16 keeps 1.5e-5 per value).
    stored = dequantize(index.embeddings[order])
    assert np.max(np.abs(stored - expected[TEXTS[0]]["image_embeds"])) < 1e-4

    # Text retrieval for one image: ITC order of the texts, as transformers scores them.
    image_at = 2
    itc = np.array([expected[text]["itc"][image_at] for text in TEXTS])
    hits = index.search_texts(sample_images[image_at], list(TEXTS))
    assert [h.text for h in hits] == [TEXTS[i] for i in np.argsort(-itc)]
    itm = np.array([expected[text]["itm"][image_at] for text in TEXTS])
    hits = index.search_texts(sample_images[image_at], list(TEXTS), rerank=len(TEXTS))
    assert [h.text for h in hits] == [TEXTS[i] for i in np.argsort(-itm)]


def test_interrupted_build_resumes_from_the_partial_file(client, sample_images, tmp_path):
    path = tmp_path / "resume.npz"
    partial = Path(str(path) + PARTIAL_SUFFIX)
    index = ImageIndex(client=client)
    index.add(sample_images[:4], partial=partial, batch_size=2)  # two batches, then "killed"
    with partial.open("ab") as handle:
        handle.write(b"\x93NUMPY torn write")
    resumed = ImageIndex.build(client, sample_images, path, batch_size=3)
    assert not partial.exists() and len(resumed) == len(sample_images)
    whole = ImageIndex.build(client, sample_images, tmp_path / "whole.npz")
    np.testing.assert_array_equal(resumed.embeddings, whole.embeddings)
    assert resumed.paths == whole.paths


def test_index_skips_unreadable_images_and_refuses_another_model(client, sample_images, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but cut short")
    index = ImageIndex.build(client, [*sample_images[:2], broken], tmp_path / "i.npz")
    assert len(index) == 2 and "truncated or corrupt" in index.metadata["skipped"][str(broken)]
    index.metadata["probe_embedding"] = [0.0] * 16
    index._probe_checked_for = None
    with pytest.raises(Exception, match="built with another model"):
        index.search(TEXTS[0])


def test_index_with_the_asyncio_client(server, client, sample_images, tmp_path):
    """The same index, hits and skips with AsyncBlip2Client as with Blip2Client (awaited methods)."""
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n but cut short")
    files = [*sample_images, broken]
    expected = ImageIndex.build(client, files, tmp_path / "sync.npz")

    async def build_and_search():
        async with AsyncBlip2Client(server.grpc_url, inference_timeout_s=120.0) as aclient:
            index = await ImageIndex.build(aclient, files, tmp_path / "async.npz", batch_size=3)
            hits = await index.search(TEXTS[0], top_k=4, rerank=len(files))
            text_hits = await index.search_texts(sample_images[0], list(TEXTS), rerank=2)
            loaded = ImageIndex.load(tmp_path / "async.npz", client=aclient)
            added = await loaded.add(files)  # only the broken file is tried again
            return index, hits, text_hits, added

    index, hits, text_hits, added = asyncio.run(build_and_search())
    assert index.paths == expected.paths and added == 0
    np.testing.assert_array_equal(index.embeddings, expected.embeddings)
    assert list(index.metadata["skipped"]) == [str(broken)]
    want = expected.search(TEXTS[0], top_k=4, rerank=len(files))
    assert [h.path for h in hits] == [h.path for h in want]
    assert max(abs(h.itm - w.itm) for h, w in zip(hits, want, strict=True)) < 1e-5
    want_texts = expected.search_texts(sample_images[0], list(TEXTS), rerank=2)
    assert [h.text for h in text_hits] == [h.text for h in want_texts]


def test_cli_builds_and_searches(server, sample_images, tmp_path, expected):
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sample_images:
        shutil.copy2(path, folder / path.name)
    output = tmp_path / "photos.idx"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    built = subprocess.run(
        [*CLI, "index", "build", str(folder), "-o", str(output), "--url", server.grpc_url],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr
    assert f"{len(sample_images)} images ({len(sample_images)} new, 0 skipped)" in built.stderr
    found = subprocess.run(
        [*CLI, "search", str(output), TEXTS[1], "-k", "3", "--json", "--url", server.grpc_url],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert found.returncode == 0, found.stderr
    hits = [json.loads(line) for line in found.stdout.splitlines()]
    names = [p.name for p in sample_images]
    best = [names[i] for i in np.argsort(-expected[TEXTS[1]]["itc"])[:3]]
    assert [Path(h["path"]).name for h in hits] == best
    missing = subprocess.run(
        [*CLI, "search", str(tmp_path / "nope.npz"), "x", "--url", server.grpc_url],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert missing.returncode == 1
    assert missing.stderr.strip().startswith("blip2-triton: error: index file not found")


# -- scoring, without a server ---------------------------------------------------------------------


def test_chunked_int16_scores_equal_float32_scoring():
    rng = np.random.default_rng(0)
    embeds = rng.normal(size=(1000, 8, 16)).astype(np.float32)
    embeds /= np.linalg.norm(embeds, axis=-1, keepdims=True)
    texts = rng.normal(size=(3, 16)).astype(np.float32)
    texts /= np.linalg.norm(texts, axis=-1, keepdims=True)
    index = ImageIndex(embeds, [f"{i}.png" for i in range(1000)])
    naive = np.einsum("nqd,td->tnq", embeds, texts).max(axis=2)
    for chunk in (1, 7, 256, 5000):
        assert np.max(np.abs(index.scores(texts, chunk_size=chunk) - naive)) < 1e-4
    assert np.max(np.abs(dequantize(quantize(embeds)) - embeds)) < 1.6e-5  # half a step, 1 / 65534
    hits = index.search_embedding(texts[0], top_k=10)
    assert [h.index for h in hits] == list(np.argsort(-naive[0])[:10])
    assert list(top_indices(np.array([0.5, 0.9, 0.9, 0.1]), 3)) == [1, 2, 0]
