"""A load test of the HTTP server on loopback: the early-exit model, the same model at
full depth, and the same weights in PyTorch, each served by Ray Serve with the same
batching settings, under 1, 8 and 32 concurrent clients.

    python bench/load_test.py runs/sst2/model [--seconds 60] [--concurrency 1,8,32]
        [--max-batch-size 64] [--batch-wait-ms 5] [--calibrate-eps 0.02]
        [--out bench/results/load_test_cpu.json]

The SST-2 dev rows are split in two seeded halves: the early-exit threshold is
calibrated on one (Learn-then-Test, consistency `--calibrate-eps`, delta 0.1, every
criterion; the model's default) and every request sends a row of the other, so the
accuracy is read on rows the threshold never saw. Systems:
(a) `early`: serve.py's deployment with the calibrated criterion;
(b) `full`: the same deployment at full depth;
(c) `torch`: the exported model loaded by transformers with `trust_remote_code=True`
    (the same function: the final exit, pooled as trained) in
    `transformers.pipeline("text-classification")`, behind a Ray Serve deployment with
    the same `@serve.batch` settings and request format;
(d) `echo`: the same stack with no model (the request parsed and batched, a constant
    answer): the most requests/s Ray Serve and the clients leave room for on this host
    (its layers and accuracy mean nothing).
Each client sends one sentence per request, waits for the answer, sends the next
(closed loop), for `--seconds` per setting (bounded by `--max-requests` too), after
`--warmup-seconds` of the same load untimed (the JAX replicas compile their programs
at start; the warm-up readies the rest of both stacks alike). Prints and writes, per system and concurrency: requests/s,
p50/p95/p99 latency, mean exit layer, accuracy, errors, the CPU time per request of
each process (the replica, Ray's HTTP proxy, the rest of Ray, the clients) and, for
rome_jax's server, the requests per handler call and the share of the time spent in
`predict`. Loopback only; not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_train_step import cpu_model  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _set_batching(handle_batch, settings) -> None:
    """`@serve.batch`'s settings as the rome_jax server sets them, per replica."""
    handle_batch.set_max_batch_size(settings.max_batch_size)
    handle_batch.set_batch_wait_timeout_s(settings.batch_wait_ms / 1000.0)


async def _answer_request(request, settings, handle_batch):
    """A request parsed as the rome_jax server parses it, batched, answered in its format."""
    from starlette.responses import JSONResponse

    from rome_jax.serving import requests as requests_lib

    try:
        texts, pairs = requests_lib.parse_request(
            await request.body(), max_texts=settings.max_texts, max_chars=settings.max_chars
        )
    except requests_lib.RequestError as e:
        return JSONResponse({"error": e.message}, status_code=e.status)
    return JSONResponse(requests_lib.answer(await handle_batch((texts, pairs))))


def torch_app(model_dir: str, settings):
    """system (c): transformers' pipeline behind Ray Serve, batching as the rome_jax server."""
    from ray import serve
    from starlette.requests import Request

    @serve.deployment
    class TorchPipelineServer:
        def __init__(self, model_dir: str, settings):
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

            from rome_jax.serving.server_settings import replica_threads

            torch.set_num_threads(replica_threads(settings))
            self.settings = settings
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            model = AutoModelForSequenceClassification.from_pretrained(model_dir, trust_remote_code=True).eval()
            self.label2id = {str(k): int(v) for k, v in model.config.label2id.items()}
            self.classify = pipeline("text-classification", model=model, tokenizer=tokenizer, device=-1)
            self.num_layers = model.config.num_hidden_layers
            _set_batching(self.handle_batch, settings)
            self._run(["warm up"] * 8)

        def _run(self, texts):
            import torch

            with torch.inference_mode():
                out = self.classify(
                    texts, batch_size=self.settings.rows_per_batch, truncation=True, max_length=settings.max_length
                )
            return [
                {"label": r["label"], "label_id": self.label2id[r["label"]], "exit_layer": self.num_layers} for r in out
            ]

        @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
        async def handle_batch(self, items):
            texts = [t for texts, _ in items for t in texts]
            rows = self._run(texts)
            answers, at = [], 0
            for texts, _ in items:
                answers.append(rows[at : at + len(texts)])
                at += len(texts)
            return answers

        async def __call__(self, request: Request):
            return await _answer_request(request, self.settings, self.handle_batch)

    from rome_jax.serving.server_settings import deployment_options

    return TorchPipelineServer.options(**deployment_options(settings)).bind(model_dir, settings)


def echo_app(settings):
    """system `echo`: the same stack with no model (requests parsed, gathered by
    `@serve.batch`, a constant answer): the most requests/s this host's Ray Serve and
    clients allow any model."""
    from ray import serve
    from starlette.requests import Request

    @serve.deployment
    class EchoServer:
        def __init__(self, settings):
            self.settings = settings
            _set_batching(self.handle_batch, settings)

        @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
        async def handle_batch(self, items):
            return [[{"label": "0", "label_id": 0, "exit_layer": 0} for _ in texts] for texts, _ in items]

        async def __call__(self, request: Request):
            return await _answer_request(request, self.settings, self.handle_batch)

    from rome_jax.serving.server_settings import deployment_options

    return EchoServer.options(**deployment_options(settings)).bind(settings)


def _cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) so far of every process on the host, by role:
    the Ray Serve replica, its HTTP proxy, the rest of Ray, this process (the clients),
    everything else."""
    import psutil

    me = os.getpid()
    totals: dict[str, float] = {}
    for proc in psutil.process_iter(["pid", "cmdline", "cpu_times"]):
        times, cmd = proc.info["cpu_times"], " ".join(proc.info["cmdline"] or [])
        if times is None:
            continue
        if proc.info["pid"] == me:
            role = "clients"
        elif "ServeReplica" in cmd:
            role = "replica"
        elif "ProxyActor" in cmd:
            role = "proxy"
        elif "ray" in cmd:
            role = "ray_other"
        else:
            role = "other"
        totals[role] = totals.get(role, 0.0) + times.user + times.system
    return totals


def _handler_stats(url: str) -> dict | None:
    """The server's /stats (rome_jax's deployment only): handler calls by size, predict seconds."""
    import urllib3

    try:
        r = urllib3.request("GET", url + "/stats", timeout=10.0, retries=False)
    except urllib3.exceptions.HTTPError:
        return None
    return json.loads(r.data) if r.status == 200 else None


def _handler_delta(before: dict | None, after: dict | None, seconds: float) -> dict | None:
    """Requests per handler call and the share of the time spent in `predict`, between two /stats."""
    if not before or not after:
        return None
    sizes = {int(k): v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
    calls = sum(sizes.values())
    return {
        "handler_calls": calls,
        "requests_per_call": sum(k * v for k, v in sizes.items()) / calls if calls else None,
        "predict_share": (after["predict_seconds"] - before["predict_seconds"]) / seconds,
    }


def load(url: str, sentences, labels, concurrency: int, seconds: float, max_requests: int, label_ids) -> dict:
    """Closed-loop clients for `seconds`: latency, layers and correctness per request;
    each client keeps one HTTP connection open (urllib3's pool of one)."""
    import urllib3

    stop = time.perf_counter() + seconds
    lock = threading.Lock()
    records: list[tuple[float, int, int]] = []  # latency s, exit layer, correct
    errors = [0]
    counter = [0]

    def client(k: int) -> None:
        connection = urllib3.PoolManager(maxsize=1, headers={"Content-Type": "application/json"})
        i = k
        while time.perf_counter() < stop:
            with lock:
                if counter[0] >= max_requests:
                    return
                counter[0] += 1
            row = i % len(sentences)
            i += concurrency
            start = time.perf_counter()
            try:
                body = json.dumps({"text": sentences[row]}).encode()
                r = connection.request("POST", url, body=body, timeout=120.0, retries=False)
                latency = time.perf_counter() - start
                if r.status != 200:
                    with lock:
                        errors[0] += 1
                    continue
                answer = json.loads(r.data)["predictions"][0]
            except urllib3.exceptions.HTTPError:
                with lock:
                    errors[0] += 1
                continue
            correct = int(answer["label_id"] == labels[row])
            with lock:
                records.append((latency, int(answer["exit_layer"]), correct))

    began, cpu_before = time.perf_counter(), _cpu_seconds()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed, cpu_after = time.perf_counter() - began, _cpu_seconds()
    served = max(len(records), 1)
    cpu_ms = {k: 1000 * (cpu_after[k] - cpu_before.get(k, 0.0)) / served for k in cpu_after}
    lat = np.array([r[0] for r in records]) * 1000
    return {
        "concurrency": concurrency,
        "seconds": elapsed,
        "requests": len(records),
        "errors": errors[0],
        "requests_per_s": len(records) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p95_ms": float(np.percentile(lat, 95)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "mean_layers": float(np.mean([r[1] for r in records])) if records else None,
        "accuracy": float(np.mean([r[2] for r in records])) if records else None,
        "cpu_ms_per_request": {k: round(v, 2) for k, v in sorted(cpu_ms.items())},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR", str(REPO.parent / "shared" / "glue")))
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--warmup-seconds", type=float, default=30.0, help="untimed load before each timed phase")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--systems", default="early,full,torch,echo", help="echo: the stack without a model")
    p.add_argument("--max-batch-size", type=int, default=64)
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--threads", type=int, default=0, help="each replica's threads (0: the CPUs), every system")
    p.add_argument("--max-requests", type=int, default=200_000)
    p.add_argument("--calibrate-eps", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "load_test_cpu.json"))
    args = p.parse_args()

    import ray
    from ray import serve

    import rome_jax
    from rome_jax.commands.serve import start_serve
    from rome_jax.data import read_glue_dir
    from rome_jax.exits.calibration import split_rows
    from rome_jax.serving.ray_app import build_app
    from rome_jax.serving.server_settings import ServerSettings

    examples = read_glue_dir("sst2", "dev", args.glue_dir)
    sentences, labels = list(examples.text_a), [int(y) for y in examples.labels]
    cal, rest = split_rows(len(sentences), 0.5, args.seed)
    served_dir = os.path.join(os.path.dirname(os.path.abspath(args.out)), ".load_test_model")
    model = rome_jax.load_pretrained(args.model_dir)
    model.calibrate([sentences[i] for i in cal], eps=args.calibrate_eps, max_length=args.max_length)
    model.save_pretrained(served_dir)  # the calibrated model, as every system loads it
    calibration = model.calibration or {}
    test_sentences, test_labels = [sentences[i] for i in rest], [labels[i] for i in rest]
    print(f"calibrated on {len(cal)} dev rows: default {calibration.get('default')}; load on the other {len(rest)}")

    port = _free_port()
    base = dict(
        model_dir=served_dir,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        max_length=args.max_length,
        max_ongoing_requests=256,
        max_queued_requests=4096,
        threads=args.threads,
    )
    results: dict = {
        "model_dir": os.path.abspath(args.model_dir),
        "calibration": {k: calibration.get(k) for k in ("rule", "target", "eps", "delta", "default")},
        "rows": {"calibration": len(cal), "load": len(rest), "seed": args.seed},
        "settings": {k: v for k, v in vars(args).items() if k not in ("model_dir",)},
        "machine": {"cpu": cpu_model() or platform.machine(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "date": time.strftime("%Y-%m-%d"),
        "systems": {},
    }
    start_serve(host="127.0.0.1", port=port)
    for system in args.systems.split(","):
        settings = ServerSettings(**base, criterion="none" if system == "full" else "auto")
        if system == "torch":
            app = torch_app(served_dir, settings)
        elif system == "echo":
            app = echo_app(settings)
        else:
            app = build_app(settings)
        serve.run(app, name=system, route_prefix=f"/{system}", blocking=False)
        url = f"http://127.0.0.1:{port}/{system}"
        rows = []
        for c in (int(x) for x in args.concurrency.split(",")):
            # untimed first: the shapes this traffic meets compile (JAX), caches fill (both)
            load(url, test_sentences, test_labels, c, args.warmup_seconds, args.max_requests, None)
            before = _handler_stats(url)
            r = load(url, test_sentences, test_labels, c, args.seconds, args.max_requests, None)
            r["handler"] = _handler_delta(before, _handler_stats(url), r["seconds"])
            rows.append(r)
            print(
                f"{system:6} concurrency {c:>3}: {r['requests_per_s']:7.1f} req/s, p50 {r['p50_ms']:7.1f} ms, "
                f"p95 {r['p95_ms']:7.1f} ms, p99 {r['p99_ms']:7.1f} ms, layers {r['mean_layers']:.2f}, "
                f"accuracy {100 * r['accuracy']:.1f}, errors {r['errors']}; CPU ms per request "
                + ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_ms_per_request"].items())
                + (
                    f"; {r['handler']['requests_per_call']:.1f} requests per handler call, "
                    f"{100 * r['handler']['predict_share']:.0f}% of the time in predict"
                    if r["handler"] and r["handler"]["handler_calls"]
                    else ""
                ),
                flush=True,
            )
        results["systems"][system] = rows
        serve.delete(system)
    serve.shutdown()
    ray.shutdown()
    results["command"] = " ".join(sys.argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
