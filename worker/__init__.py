"""The Celery GPU worker: claims chunks of items, runs the Janus engine, stores the results.

- `app`: the Celery entry point (`celery -A worker.app worker ...`) and process signals;
- `tasks`: thin Celery tasks that unpack ids and call the pipeline functions below;
- `chunk`: one chunk message end to end, with `caption` / `generate` as its kind-specific
  handlers, `claim` for the conditional item updates and `encode` for image files;
- `expand` (with `sources`): an S3 prefix or a manifest streamed into items;
- `finalize`: results.jsonl / errors.jsonl and the job's final status;
- `sweeper`: expired leases, lost messages, stuck jobs;
- `runtime`, `context`: the engine's lifecycle and the pipeline's dependencies.

Prometheus metrics are the objects of `worker.metrics`, recorded by `chunk`, the
handlers and `sweeper`, and served by `app` on `JANUS_BATCH_METRICS_PORT`.

Tests call the pipeline functions directly with their own `Context`.
"""
