"""The Celery app for processes that need no model: beat (the sweeper schedule) and Flower.

    celery -A janus_batch.celeryapp beat      # sends janus.sweep every sweep_interval
    celery -A janus_batch.celeryapp flower    # the fleet, at http://localhost:5555

Importing this module reads the settings (it is an entry point, like `worker.app`).
"""

from janus_batch.queue import get_celery

app = get_celery()
