"""The service, started for real (uvicorn on a free loopback port) and used over HTTP."""

import asyncio
import base64
import os
import socket
import subprocess
import sys
import time
from dataclasses import MISSING, fields
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemathesis
from click.testing import CliRunner
from helpers import FAST_ARGS, free_port, make_colour_folder, wait_until_ready, write_image
from hypothesis import HealthCheck, given, settings
from prometheus_client.parser import text_string_to_metric_families
from schemathesis import GenerationMode

from headstart.classify.workflow import predict_with_head
from headstart.cli import main
from headstart.commands.options import DEFAULT_DEVICE
from headstart.commands.serve import serve
from headstart.search.query import query_index
from headstart.serve import Client, ServiceError
from headstart.serve.settings import ServeSettings

KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {KEY}"}


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    make_colour_folder(root / "images", per_class=10)
    cache = root / "cache"
    assert (
        run(
            "train", root / "images", *FAST_ARGS, "--cache", cache, "-o", root / "head", "-q"
        ).exit_code
        == 0
    )
    built = run(
        "index", "build", root / "images", *FAST_ARGS, "--cache", cache, "-o", root / "index", "-q"
    )
    assert built.exit_code == 0
    return root


@pytest.fixture(scope="module")
def server(trained: Path):
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "headstart",
        "serve",
        "--head",
        str(trained / "head"),
        "--index",
        str(trained / "index"),
        "--port",
        str(port),
        "--max-batch",
        "16",
        "--max-wait-ms",
        "50",
        "--max-upload-mb",
        "1",
        "--api-key-env",
        "HS_KEY",
    ]
    process = subprocess.Popen(
        command, env={**os.environ, "HS_KEY": KEY}, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_ready(url, lambda: process.poll() is None, process.communicate)
    yield url
    process.terminate()
    process.wait(timeout=30)


def image_paths(trained: Path, per_class: int = 2) -> list[Path]:
    return [
        p
        for name in ("red", "green", "blue")
        for p in sorted((trained / "images" / name).glob("*.jpg"))[:per_class]
    ]


def test_classify_matches_offline_predict(server: str, trained: Path) -> None:
    paths = image_paths(trained)
    files = [("files", (p.name, p.read_bytes())) for p in paths]
    answer = httpx.post(f"{server}/v1/classify", files=files, params={"top_k": 3}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    offline = predict_with_head(trained / "head", [str(p) for p in paths], trained / "cache")
    classes = offline.classes.astype(str)
    for result, row in zip(results, offline.proba, strict=True):
        served = {t["label"]: t["probability"] for t in result["top"]}
        assert result["label"] == classes[row.argmax()]
        for label, probability in served.items():
            assert probability == pytest.approx(float(row[list(classes).index(label)]), abs=2e-3)


def test_embed_with_base64_json_matches_the_cache(server: str, trained: Path) -> None:
    from headstart.cache import EmbeddingCache

    paths = image_paths(trained, 1)
    body = {"images": [base64.b64encode(p.read_bytes()).decode() for p in paths]}
    answer = httpx.post(f"{server}/v1/embed", json=body, headers=AUTH).json()
    store = EmbeddingCache(trained / "cache").open(answer["fingerprint"])
    np.testing.assert_allclose(
        np.array(answer["embeddings"]),
        store.load_files([str(p) for p in paths]),
        rtol=1e-2,
        atol=2e-3,
    )


def test_neighbors_by_image_and_by_vector_match_offline_knn(server: str, trained: Path) -> None:
    query = image_paths(trained, 1)[0]
    by_image = httpx.post(
        f"{server}/v1/neighbors",
        files=[("file", (query.name, query.read_bytes()))],
        params={"k": 5},
        headers=AUTH,
    ).json()["neighbors"]
    loaded, offline = query_index(trained / "index", trained / "cache", sources=[str(query)], k=5)
    assert [loaded.items[n["id"]].path for n in by_image] == [n.path for n in offline]
    assert [n["similarity"] for n in by_image] == pytest.approx(
        [n.similarity for n in offline], abs=2e-3
    )
    assert all("path" not in n for n in by_image)  # no server paths, only the index's ids

    vector = httpx.post(
        f"{server}/v1/embed", files=[("files", (query.name, query.read_bytes()))], headers=AUTH
    ).json()["embeddings"][0]
    by_vector = httpx.post(f"{server}/v1/neighbors", json={"vector": vector, "k": 5}, headers=AUTH)
    assert [n["id"] for n in by_vector.json()["neighbors"]] == [n["id"] for n in by_image]


def test_info_health_and_metrics(server: str, trained: Path) -> None:
    info = httpx.get(f"{server}/v1/info", headers=AUTH).json()
    assert info["classes"] == ["blue", "green", "red"] and info["dim"] == 512
    assert info["index_size"] == 30 and info["model"] == "torchvision:resnet18"
    assert info["text"] is False  # an image-only model: no search by text
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server}/readyz").json() == {"ready": True}
    document = httpx.get(f"{server}/openapi.json").json()
    assert document["paths"].keys() >= {"/v1/classify", "/v1/embed", "/v1/neighbors"}
    # An image-only model: search by text would only refuse, so it is not offered (the route
    # still answers, with its 422: test_an_image_only_model_refuses_search_by_text).
    assert "/v1/search" not in document["paths"]
    # A vector valid by the schema is one the index takes: exactly its width.
    vector = document["components"]["schemas"]["VectorQuery"]["properties"]["vector"]
    assert vector["minItems"] == vector["maxItems"] == info["dim"]
    text = httpx.get(f"{server}/metrics", headers=AUTH).text
    assert 'headstart_requests_total{endpoint="/v1/info",status="200"}' in text
    assert "headstart_batch_size_bucket" in text


@pytest.mark.parametrize(
    ("request_kwargs", "status", "message"),
    [
        (
            {"files": [("files", ("notes.jpg", b"plain text, not a JPEG"))]},
            422,
            "image 0 (notes.jpg)",
        ),
        ({}, 400, "empty request"),
        ({"json": {"pictures": ["abc"]}}, 422, "pictures"),
        ({"json": {"images": ["***not base64***"]}}, 422, "not valid base64"),
        (
            {
                "content": b"x" * (2 * 2**20),
                "headers": {"content-type": "application/octet-stream"},
            },
            413,
            "over the 1 MB limit",
        ),
        (
            {"content": b"abc", "headers": {"content-type": "text/plain"}},
            415,
            "unsupported content",
        ),
        ({"json": {"images": ["abc"]}, "params": {"top_k": -1}}, 422, "top_k"),
        ({"json": {"images": ["abc"]}, "params": {"top_k": 0}}, 422, "top_k"),
    ],
)
def test_bad_requests_get_a_status_and_a_reason(
    server: str, request_kwargs, status: int, message: str
) -> None:
    headers = {**AUTH, **request_kwargs.pop("headers", {})}
    answer = httpx.post(f"{server}/v1/classify", headers=headers, **request_kwargs)
    assert answer.status_code == status and message in answer.json()["error"]
    assert httpx.get(f"{server}/healthz").status_code == 200  # still serving


def test_wrong_vector_width_and_missing_key_are_refused(server: str) -> None:
    wrong = httpx.post(f"{server}/v1/neighbors", json={"vector": [0.1] * 7}, headers=AUTH)
    assert wrong.status_code == 422 and "expects 512" in wrong.json()["error"]
    no_k = httpx.post(
        f"{server}/v1/neighbors", json={"vector": [0.1] * 512}, params={"k": 0}, headers=AUTH
    )
    assert no_k.status_code == 422 and "k" in no_k.json()["error"]
    assert httpx.get(f"{server}/v1/info").status_code == 401
    assert (
        httpx.get(f"{server}/v1/info", headers={"Authorization": "Bearer nope"}).status_code == 401
    )
    with pytest.raises(ServiceError) as refused:
        Client(server).info()
    assert refused.value.status == 401


def test_an_image_only_model_refuses_search_by_text(server: str) -> None:
    answer = httpx.post(f"{server}/v1/search", json={"text": "a red square"}, headers=AUTH)
    assert answer.status_code == 422
    assert answer.json()["error"] == (
        "this service cannot search by text: torchvision:resnet18 is an image-only model "
        "(text needs --model open_clip:ARCH/TAG)"
    )
    with pytest.raises(ServiceError) as refused:
        Client(server, api_key=KEY).search("a red square")
    assert refused.value.status == 422


def test_concurrent_requests_are_batched_and_all_answered(server: str, trained: Path) -> None:
    paths = image_paths(trained, 10)
    expected = {p.name: p.parent.name for p in paths}

    async def one(client: httpx.AsyncClient, path: Path) -> tuple[str, str]:
        answer = await client.post(
            "/v1/classify", files=[("files", (path.name, path.read_bytes()))]
        )
        answer.raise_for_status()
        return path.name, answer.json()["results"][0]["label"]

    async def burst() -> list[tuple[str, str]]:
        async with httpx.AsyncClient(base_url=server, headers=AUTH, timeout=120) as client:
            return await asyncio.gather(*(one(client, paths[i % len(paths)]) for i in range(50)))

    answers = asyncio.run(burst())
    assert len(answers) == 50
    assert sum(label == expected[name] for name, label in answers) >= 45
    text = httpx.get(f"{server}/metrics", headers=AUTH).text
    samples = {
        (sample.name, sample.labels.get("le")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    batches = samples["headstart_batch_size_count", None]
    singles = samples["headstart_batch_size_bucket", "1.0"]
    assert batches > singles  # some forward passes carried more than one image


def test_python_client(server: str, trained: Path) -> None:
    paths = image_paths(trained, 1)
    with Client(server, api_key=KEY) as client:
        results = client.classify(paths, top_k=2)
        vectors = client.embed(paths)
        neighbors = client.neighbors(paths[0], k=3)
    assert [r["filename"] for r in results] == [p.name for p in paths] and len(
        results[0]["top"]
    ) == 2
    assert vectors.shape == (3, 512) and len(neighbors) == 3


def test_mismatched_index_refuses_to_start(trained: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-index"
    args = ["--model", "resnet18", "--weights", "none", "--crop", "48"]
    assert (
        run(
            "index",
            "build",
            trained / "images",
            *args,
            "--cache",
            trained / "cache",
            "-o",
            other,
            "-q",
        ).exit_code
        == 0
    )
    result = CliRunner().invoke(
        main, ["serve", "--head", str(trained / "head"), "--index", str(other)]
    )
    assert result.exit_code == 1 and "holds embeddings" in result.output


def test_a_taken_port_is_refused_before_the_model_loads(trained: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            main, ["serve", "--head", str(trained / "head"), "--port", str(port)]
        )
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output and "serving" not in result.output


def test_no_index_means_404(trained: Path) -> None:
    from fastapi.testclient import TestClient

    from headstart.serve.app import ServeSettings, create_app

    app = create_app(ServeSettings(head_dir=str(trained / "head"), device="cpu"))
    with TestClient(app) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        image = write_image(trained / "query.jpg", 3)
        answer = client.post("/v1/neighbors", files=[("file", ("q.jpg", image.read_bytes()))])
        by_text = client.post("/v1/search", json={"text": "a red square"})
    assert answer.status_code == 404 and "no index" in answer.json()["error"]
    assert by_text.status_code == 404 and "no index" in by_text.json()["error"]


def test_every_route_is_labelled_by_its_path_in_the_metrics() -> None:
    from fastapi.testclient import TestClient

    from headstart.serve.app import create_app

    def no_model(head_dir, index_dir, device):
        raise RuntimeError("labelling needs no model")

    app = create_app(ServeSettings(head_dir="unused"), engine_loader=no_model)
    documented = [
        (method.upper(), path) for path, calls in app.openapi()["paths"].items() for method in calls
    ]
    pages = (app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url)
    calls = documented + [("GET", page) for page in pages]
    paths = {path for _, path in calls}
    assert paths >= {"/healthz", "/readyz", "/metrics", "/v1/info", "/v1/classify", "/v1/embed"}
    assert paths >= {"/v1/neighbors", "/v1/search", "/docs", "/openapi.json"}
    with TestClient(app) as client:
        for method, path in calls:
            client.request(method, path)
        client.get("/no/such/route")
        text = client.get("/metrics").text
    for path in paths:
        assert f'headstart_requests_total{{endpoint="{path}",' in text, path
    assert 'headstart_requests_total{endpoint="other",status="404"}' in text


def test_serve_help_shows_the_settings_defaults() -> None:
    shown = " ".join(run("serve", "--help").output.split())  # undo the help's line wrapping
    parsed = serve.make_context("serve", ["--head", "h"]).params  # what a bare command line gets
    defaults = {f.name: f.default for f in fields(ServeSettings) if f.default is not MISSING}
    shared = defaults.keys() & parsed.keys()
    assert shared >= {"device", "max_batch", "max_wait_ms", "max_upload_mb", "max_images"}
    for option in serve.params:
        if option.name not in shared:
            continue
        assert parsed[option.name] == defaults[option.name], option.name
        if option.show_default and not option.is_flag:
            entry = shown.split(f" {option.opts[0]} ", 1)[1].split(" --", 1)[0]
            assert f"[default: {defaults[option.name]}" in entry, option.name
    assert defaults["device"] == DEFAULT_DEVICE  # serve picks a device as the other verbs do


def test_every_operation_keeps_its_documented_contract(server: str, trained: Path) -> None:
    """schemathesis generates valid and invalid requests for every operation in /openapi.json
    and runs all its checks on each answer: no 5xx, only documented statuses, content types and
    bodies, invalid requests refused and valid ones accepted. A schema cannot say "a picture",
    so valid requests carry a real image (and a vector of the index's width) in place of the
    generated bytes."""
    # Too many images is a documented 413 (a limit of the service), not only a schema error.
    refusals = ["400", "401", "403", "404", "406", "413", "422", "428", "5xx"]
    config = schemathesis.Config.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": refusals}}}
    )
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json", headers=AUTH, config=config)
    picture = image_paths(trained, per_class=1)[0].read_bytes()
    dim = httpx.get(f"{server}/v1/info", headers=AUTH).json()["dim"]
    failures = []
    for found in schema.get_all_operations():
        operation = found.ok()
        valid = operation.as_strategy(GenerationMode.POSITIVE)
        invalid = operation.as_strategy(GenerationMode.NEGATIVE)
        cases = valid.map(lambda case: _with_a_real_image(case, picture, dim)) | invalid

        @given(case=cases)
        @settings(
            max_examples=40,
            derandomize=True,  # the same requests on every run: CI stays reproducible
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        def keeps_its_contract(case) -> None:
            case.call_and_validate(headers=AUTH)

        try:
            keeps_its_contract()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # schemathesis reports a group; gather every operation's
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


def _with_a_real_image(case, picture: bytes, dim: int):
    body = case.body
    if not isinstance(body, dict):
        return case
    encoded = base64.b64encode(picture).decode()
    if case.media_type == "multipart/form-data":
        if "files" in body:
            body["files"] = [picture] * len(body["files"])
        if "file" in body:
            body["file"] = picture
    else:
        if "images" in body:
            body["images"] = [encoded] * len(body["images"])
        if "image" in body:
            body["image"] = encoded
        if "vector" in body:
            body["vector"] = [0.5] * dim
    return case
