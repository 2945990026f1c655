"""The Ray Serve deployment, started in its own process on a free local port: answers equal
`predict`'s, in order; each bad request's status and message; concurrent requests
batched, every caller getting its own answer; a full queue answers 503, never hangs."""

import importlib.util
import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

# Ray is never imported here: a process that loaded Ray next to XLA crashed later, in
# XLA's compiler. The server runs in a process of its own.
if importlib.util.find_spec("ray") is None:
    pytest.skip("the server needs ray[serve] (requirements-test.txt)", allow_module_level=True)
requests = pytest.importorskip("requests")

pytestmark = pytest.mark.slow  # starts a Ray instance

CRITERION = "entropy:0.6"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The server runs in its own process, as a user starts it: Ray's threads and forked
# workers stay out of the test process (a JAX process that hosted Ray can crash later).
_LAUNCHER = """
import json, signal, sys, threading
from ray import serve
import ray
from rome_jax.commands.serve import start
from rome_jax.serving.ray_app import ServerSettings, build_app

model_dir, port = sys.argv[1], int(sys.argv[2])
settings = ServerSettings(
    model_dir=model_dir, criterion=CRITERION, max_batch_size=16, batch_wait_ms=50, rows_per_batch=16,
    max_texts=4, max_chars=200, max_length=16, long_texts="refuse",
)
# a small object store: Ray's default reserves 30% of the memory the other tests need
start(settings, host="127.0.0.1", port=port, num_cpus=2, block=False, object_store_memory=200 * 2**20)
# a second app whose queue holds one request: over capacity it must answer 503
tight = ServerSettings(
    model_dir=model_dir, max_batch_size=1, batch_wait_ms=0, max_ongoing_requests=1, max_queued_requests=1,
    compile_at_start=False,
)
serve.run(build_app(tight), name="tight", route_prefix="/tight", blocking=False)
scaled = build_app(ServerSettings(model_dir=model_dir, replicas=1, max_replicas=4, max_batch_size=32))
config = scaled._bound_deployment._deployment_config.autoscaling_config
print("AUTOSCALING", json.dumps([config.min_replicas, config.max_replicas, config.target_ongoing_requests]))
stop = threading.Event()
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: stop.set())
print("READY", flush=True)
while not stop.wait(1):
    pass
serve.shutdown()
ray.shutdown()
""".replace("CRITERION", repr(CRITERION))


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    import signal
    import subprocess
    import sys
    import time

    from rome_jax.serving.api import load_pretrained

    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, tiny_model, str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 300
        while "READY" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}", load_pretrained(tiny_model), log
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _expected(model, texts, pairs=None):
    return list(model.predict(texts, pairs, criterion=CRITERION, max_length=16).rows())


def _same(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g["exit_layer"] == e["exit_layer"] and g["label"] == e["label"] and g["label_id"] == e["label_id"]
        np.testing.assert_allclose(g["probabilities"], e["probabilities"], atol=1e-5)


def test_answers_equal_predict_in_order(server):
    url, model, _ = server
    one = requests.post(url, json={"text": "a gem of a film"}, timeout=60)
    assert one.status_code == 200
    _same(one.json()["predictions"], _expected(model, ["a gem of a film"]))
    pair = requests.post(url, json={"text": "a man sleeps", "text_pair": "a person rests"}, timeout=60)
    _same(pair.json()["predictions"], _expected(model, ["a man sleeps"], ["a person rests"]))
    texts = ["dull", "a long and winding story about nothing", "fine", "great fun"]
    many = requests.post(url + "/predict", json={"texts": texts}, timeout=60)
    _same(many.json()["predictions"], _expected(model, texts))
    assert requests.get(url + "/health", timeout=30).json() == {"status": "ok"}
    info = requests.get(url + "/info", timeout=30).json()
    assert info["criterion"] == CRITERION and info["num_layers"] == 2 and info["settings"]["max_batch_size"] == 16
    assert info["omp_num_threads"] == str(os.cpu_count())  # not Ray's 1 (ServerSettings.threads)
    assert info["compiled_shapes"] == 8  # one length bucket (16) x the row buckets of 16: 16, 12, 8, 6, 4, 3, 2, 1


@pytest.mark.parametrize(
    "body, status, message",
    [
        (b"{not json", 400, "not valid JSON"),
        (b'["a"]', 400, "must be a JSON object"),
        (b"{}", 400, "missing 'text'"),
        (b'{"text": ""}', 400, "'text' is empty"),
        (b'{"text": 7}', 400, "'text' must be a string, not int"),
        (b'{"texts": ["a", 3]}', 400, "'texts[1]' must be a string"),
        (b'{"texts": ["a", "b", "c", "d", "e"]}', 413, "5 texts in one request, more than the limit of 4"),
        (json.dumps({"text": "x" * 201}).encode(), 413, "201 characters, more than the limit of 200"),
        (json.dumps({"text": "word " * 40}).encode(), 413, "tokens, more than the limit of 16"),
        (b'{"texts": ["a", "b"], "text_pairs": ["c"]}', 400, "2 texts but 1 text_pairs"),
        (b'{"txt": "a"}', 400, "unknown field 'txt'"),
    ],
)
def test_bad_requests_get_one_line_and_the_replica_goes_on(server, body, status, message):
    url, _, _ = server
    r = requests.post(url, data=body, timeout=60)
    assert r.status_code == status and message in r.json()["error"] and "\n" not in r.json()["error"], r.text
    assert requests.post(url, json={"text": "still here"}, timeout=60).status_code == 200


def test_concurrent_requests_are_batched_and_answered_each(server):
    url, model, _ = server
    texts = [f"review number {i} says {'good' if i % 2 else 'bad'} things" for i in range(24)]
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda t: requests.post(url, json={"text": t}, timeout=120).json(), texts))
    expected = _expected(model, texts)
    for answer, row in zip(answers, expected):
        _same(answer["predictions"], [row])
    sizes = {int(k) for k in requests.get(url + "/stats", timeout=30).json()["batch_sizes"]}
    assert max(sizes) > 1  # the handler saw several requests at once


def test_over_capacity_answers_503_not_a_hang(server):
    url, _, _ = server
    with ThreadPoolExecutor(32) as pool:
        codes = list(
            pool.map(
                lambda i: requests.post(url + "/tight", json={"text": f"t {i}"}, timeout=120).status_code, range(32)
            )
        )
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes


def test_settings_are_checked_and_autoscaling_is_configured():
    from rome_jax.serving.server_settings import ServerSettings, deployment_options

    for bad, message in (
        ({"long_texts": "cut"}, "truncate or refuse"),
        ({"max_batch_size": 0}, "max_batch_size must be >= 1"),
        ({"replicas": 3, "max_replicas": 2}, "below replicas 3"),
        ({"batch_wait_ms": -1}, "batch_wait_ms"),
        ({"threads": -1}, "threads must be >= 0"),
    ):
        with pytest.raises(ValueError, match=message):
            ServerSettings(model_dir="m", **bad)
    options = deployment_options(ServerSettings(model_dir="m", replicas=1, max_replicas=4, max_batch_size=32))
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 32}
    assert "num_replicas" not in options
    assert deployment_options(ServerSettings(model_dir="m", replicas=2))["num_replicas"] == 2
    env = deployment_options(ServerSettings(model_dir="m", threads=3))["ray_actor_options"]["runtime_env"]["env_vars"]
    assert env == {"OMP_NUM_THREADS": "3"}


def test_the_server_process_builds_the_autoscaling_deployment(server):
    """Ray Serve took the options: the launcher built an autoscaling app and printed
    its configuration."""
    url, _, log = server
    line = next(x for x in log.read_text().splitlines() if x.startswith("AUTOSCALING "))
    assert json.loads(line.split(" ", 1)[1]) == [1, 4, 32]


def test_ray_stays_out_of_the_test_process(server):
    import sys

    assert "ray" not in sys.modules
