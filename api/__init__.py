"""The thin FastAPI submit API: validates, writes rows, enqueues; answers with job ids.

It imports the shared job code (`janus_batch`) only, never torch, transformers or `janus`.
"""
