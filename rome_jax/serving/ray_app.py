"""The early-exit model behind HTTP on Ray Serve: dynamic request batching
(`@serve.batch`), replicas, a bounded queue, a Ray cluster when one machine is not
enough. `serve.py` starts it; `build_app` is the Python entry point.

    app = build_app(ServerSettings(model_dir="runs/sst2/model", max_batch_size=64, batch_wait_ms=5))
    serve.run(app, route_prefix="/")

Routes:
- `POST /` (or `/predict`): a request (`rome_jax.serving.requests`: one text, a pair,
  or lists) -> {"predictions": [...]}, the `predict.py` rows, in order;
- `GET /health` -> {"status": "ok"};
- `GET /info` -> the model, its criterion (and the calibration it comes from), its
  labels, layers and the server's settings;
- `GET /stats` -> how many requests each batch of the handler held, and the seconds
  spent inside `predict` over all of them.

Inside a replica, the requests that `@serve.batch` gathers (up to `max_batch_size`
requests, waiting at most `batch_wait_ms` for more) run as one `predict` call: length
buckets and the per-example executor, as `MultiExitModel.predict` (examples leave the
batch as they exit), in a worker thread: the replica's event loop keeps answering
health checks and taking requests while XLA computes (on the 2-core CPU of
docs/serving.md, 43 -> 59 requests/s at concurrency 32). Bad requests get a 4xx
answer with one line; an error inside a batch answers 500 to its requests and leaves
the replica serving. Over capacity (`max_ongoing_requests` per replica running,
`max_queued_requests` waiting), Ray Serve answers 503 at once rather than letting
requests hang.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections import Counter
from typing import Any, cast

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from rome_jax.serving import requests as requests_lib
from rome_jax.serving.predict import Predictions
from rome_jax.serving.server_settings import ServerSettings, deployment_options

__all__ = ["EarlyExitServer", "ServerSettings", "build_app"]

logger = logging.getLogger(__name__)


def _json(payload: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(payload, status_code=status)


@serve.deployment
class EarlyExitServer:
    """One replica: the model, loaded and compiled at start, behind the routes above."""

    def __init__(self, settings: ServerSettings):
        from rome_jax.data.buckets import length_buckets
        from rome_jax.serving.api import load_pretrained
        from rome_jax.serving.predict import compile_early_exit, default_max_length, describe, resolve_criterion

        self.settings = settings
        self.model = load_pretrained(settings.model_dir)
        if self.model.tokenizer is None:
            raise ValueError(f"{settings.model_dir}: no tokenizer files")
        if self.model.config.token_exits:
            raise ValueError(f"{settings.model_dir}: a tagger; the server answers sequence classifiers")
        self.criterion = resolve_criterion(settings.criterion, self.model.config, self.model.calibration)
        self.max_length = settings.max_length or default_max_length(self.model.config, self.model.calibration)
        self.describe = describe(self.criterion)
        self.batch_sizes: Counter[int] = Counter()
        self.predict_seconds = 0.0  # inside `predict`, over every handler call
        batched: Any = self.handle_batch  # serve.batch's wrapper: its settings are set per replica
        batched.set_max_batch_size(settings.max_batch_size)
        batched.set_batch_wait_timeout_s(settings.batch_wait_ms / 1000.0)
        start = time.perf_counter()
        self.compiled_shapes = 0
        if settings.compile_at_start:
            self.compiled_shapes = compile_early_exit(
                self.model.config,
                self.model.params,
                self.criterion,
                buckets=length_buckets(self.max_length, "auto"),
                batch_size=settings.rows_per_batch,
            )
        self._predict(["warm up"] * min(settings.rows_per_batch, 8), None)  # and the host side
        self.ready_seconds = time.perf_counter() - start
        logger.info(
            "replica ready in %.1f s (%s, %s, %d shapes compiled)",
            self.ready_seconds,
            settings.model_dir,
            self.describe,
            self.compiled_shapes,
        )

    def _predict(self, texts: list[str], pairs: list[str] | None) -> list[dict]:
        out = self.model.predict(
            texts,
            pairs,
            criterion=self.criterion,
            batch_size=self.settings.rows_per_batch,
            max_length=self.max_length,
        )
        return list(cast(Predictions, out).rows())  # a sequence classifier: taggers are refused at start

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def handle_batch(self, items: list[tuple[list[str], list[str] | None]]) -> list[Any]:
        """The requests gathered by `@serve.batch`: singles and pairs each run as one
        `predict` call; every request gets its own rows back (or the error, as a string)."""
        self.batch_sizes[len(items)] += 1
        answers: list[Any] = [None] * len(items)
        for paired in (False, True):
            members = [i for i, (_, pairs) in enumerate(items) if (pairs is not None) == paired]
            if not members:
                continue
            texts = [t for i in members for t in items[i][0]]
            pairs = [p for i in members for p in (items[i][1] or [])] if paired else None
            start = time.perf_counter()
            try:
                rows = await asyncio.to_thread(self._predict, texts, pairs)
            except Exception as e:  # one bad batch answers 500 to its requests; the replica goes on
                logger.exception("a batch of %d requests failed", len(members))
                for i in members:
                    answers[i] = f"{type(e).__name__}: {e}".splitlines()[0]
                continue
            finally:
                self.predict_seconds += time.perf_counter() - start
            at = 0
            for i in members:
                count = len(items[i][0])
                answers[i] = rows[at : at + count]
                at += count
        return answers

    def _token_counts(self, texts: list[str], pairs: list[str] | None) -> list[int]:
        encoded = self.model.tokenizer(texts, pairs, truncation=False)["input_ids"]
        return [len(ids) for ids in encoded]

    async def __call__(self, request: Request) -> JSONResponse:
        path = request.url.path.rstrip("/") or "/"
        if request.method == "GET" and path.endswith("/health"):
            return _json({"status": "ok"})
        if request.method == "GET" and path.endswith("/info"):
            return _json(self.info())
        if request.method == "GET" and path.endswith("/stats"):
            return _json(
                {
                    "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                    "predict_seconds": round(self.predict_seconds, 3),
                }
            )
        if request.method != "POST":
            return _json({"error": f"{request.method} {path}: POST a request to / (GET /health, /info, /stats)"}, 405)
        s = self.settings
        try:
            texts, pairs = requests_lib.parse_request(
                await request.body(), max_texts=s.max_texts, max_chars=s.max_chars
            )
            if s.long_texts == "refuse":
                requests_lib.check_lengths(self._token_counts(texts, pairs), self.max_length, refuse=True)
        except requests_lib.RequestError as e:
            return _json({"error": e.message}, e.status)
        result = await self.handle_batch((texts, pairs))
        if isinstance(result, str):
            return _json({"error": result}, 500)
        return _json(requests_lib.answer(result))

    def info(self) -> dict:
        calibration = self.model.calibration or {}
        config = self.model.config
        return {
            "model": self.settings.model_dir,
            "family": config.family,
            "num_layers": config.num_layers,
            "num_labels": config.num_labels,
            "label_names": self.model.label_names,
            "exit_pooling": config.exit_pooling,
            "criterion": self.describe,
            "calibration": {k: calibration.get(k) for k in ("rule", "target", "eps", "delta", "default", "rows")}
            if calibration
            else None,
            "max_length": self.max_length,
            "compiled_shapes": self.compiled_shapes,
            "ready_seconds": round(self.ready_seconds, 1),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "settings": dataclasses.asdict(self.settings),
        }


def build_app(settings: ServerSettings) -> Any:
    """The Ray Serve application of `settings` (`serve.run(app)` starts it)."""
    deployment: Any = EarlyExitServer  # serve.deployment's wrapper of the class
    return deployment.options(**deployment_options(settings)).bind(settings)
