"""The client: the HTTP client of the API (`janus_batch.client.http`) and the `janus-batch`
command (`janus_batch.client.cli`). `pip install janus-batch` installs exactly this: it needs
httpx, typer, rich and pillow, never SQLAlchemy, Celery or torch (a test keeps it so)."""

from janus_batch.client.http import FINAL_STATUSES, ApiError, Client

__all__ = ["FINAL_STATUSES", "ApiError", "Client"]
