"""Queue and task names, in one place (the API sends by name; the worker registers them)."""

CAPTION_QUEUE = "janus.caption"
GENERATE_QUEUE = "janus.generate"
CONTROL_QUEUE = "janus.control"

CAPTION_CHUNK_TASK = "janus.caption_chunk"
GENERATE_CHUNK_TASK = "janus.generate_chunk"
EXPAND_SOURCE_TASK = "janus.expand_source"
FINALIZE_JOB_TASK = "janus.finalize_job"
SWEEP_TASK = "janus.sweep"
SEND_WEBHOOK_TASK = "janus.send_webhook"
DISPATCH_JOB_TASK = "janus.dispatch_job"

LOCAL_OWNER = "local"
"""Owner of every job in the open single-user mode."""

RESULTS_NAME = "results.jsonl"
ERRORS_NAME = "errors.jsonl"
