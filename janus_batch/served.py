"""The models a fleet serves, by public name: what a job may put in `model`.

A worker serves one model (JANUS_BATCH_MODEL) under its public name (JANUS_BATCH_MODEL_NAME,
default: the MODEL string as written) and announces it with its presence
(`janus_batch.fleet`). A job names the model of a live worker, one listed in
JANUS_BATCH_SERVED_MODELS (accepted while no worker serves it yet: the job waits for one), or
none: then it gets JANUS_BATCH_DEFAULT_MODEL. Any other name is refused, naming the served ones.
"""

from __future__ import annotations

from sqlalchemy import select

from janus_batch import fleet
from janus_batch.db import session_scope
from janus_batch.inputs import InvalidInput
from janus_batch.models import Job
from janus_batch.settings import MAX_MODEL_NAME, Settings
from janus_batch.states import JOB_LIVE


def served_models(settings: Settings) -> list[str]:
    """Every name a job may put in `model`: the default model and SERVED_MODELS, then the
    models of live workers (their heartbeats), once each."""
    live = fleet.live_models(settings.redis_url, settings.queue_prefix)
    return list(dict.fromkeys([*settings.served_model_names(), *live]))


def models_of_live_jobs(database_url: str) -> list[str]:
    """The models named by queued or running jobs (those waiting on a model's queue), so a
    model renamed or retired while its jobs wait is still reported (/readyz)."""
    with session_scope(database_url) as session:
        query = select(Job.model).where(Job.status.in_(list(JOB_LIVE))).distinct()
        return sorted(session.scalars(query))


def resolve_model(settings: Settings, model: object) -> str:
    """The public name of a job's model: the default one for None, `model` if the fleet
    serves it; InvalidInput on `model` listing the served names otherwise."""
    if model is None:
        return settings.resolved_default_model()
    if not isinstance(model, str) or not model.strip():
        raise InvalidInput("model", "must be a model's name (a non-empty string)")
    if len(model) > MAX_MODEL_NAME:
        raise InvalidInput("model", f"must be at most {MAX_MODEL_NAME} characters")
    if model in settings.served_model_names():  # no Redis round trip for the usual names
        return model
    served = served_models(settings)
    if model in served:
        return model
    raise InvalidInput(
        "model", f"unknown model {model!r}: this fleet serves {', '.join(map(repr, served))}"
    )
