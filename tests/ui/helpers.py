"""Jobs written straight into SQL and storage, as a worker would leave them (no queue)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from janus_batch.constants import LOCAL_OWNER
from janus_batch.db import session_scope
from janus_batch.models import Item, Job, new_id, utcnow
from janus_batch.states import ItemStatus, JobStatus
from tests.ui.art import SCENES, paint, png


@dataclass
class ItemSpec:
    """One item to insert: its input, final state, result or error."""

    input: dict[str, Any]
    status: str = ItemStatus.SUCCEEDED
    result: dict[str, Any] | None = None
    error: str | None = None
    custom_id: str | None = None


@dataclass
class MadeJob:
    """What `insert_job` wrote."""

    id: str
    prefix: str
    items: list[ItemSpec] = field(default_factory=list)


def insert_job(
    db: str,
    kind: str,
    items: list[ItemSpec],
    *,
    owner: str = LOCAL_OWNER,
    status: str = JobStatus.SUCCEEDED,
    job_id: str | None = None,
    seconds: float = 42.0,
) -> MadeJob:
    """A job row with its items and matching counters; final jobs have a finish time."""
    job_id = job_id or new_id("job")
    now = utcnow()
    counts = {
        s: sum(1 for i in items if i.status == s) for s in ("succeeded", "failed", "cancelled")
    }
    final = status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
    params = (
        {"n": 2, "cfg_weight": 5.0, "format": "png"}
        if kind == "generate"
        else {"prompt": "Describe this image in one sentence."}
    )
    with session_scope(db) as session:
        session.add(
            Job(
                id=job_id,
                owner=owner,
                kind=kind,
                status=status,
                model="deepseek-community/Janus-Pro-1B",
                params=params,
                output_prefix=f"jobs/{job_id}",
                expanded=True,
                total=len(items),
                created_at=now - timedelta(seconds=seconds + 5),
                started_at=now - timedelta(seconds=seconds),
                finished_at=now if final else None,
                **counts,
            )
        )
        session.flush()
        for idx, spec in enumerate(items):
            done = spec.status != ItemStatus.PENDING
            session.add(
                Item(
                    job_id=job_id,
                    idx=idx,
                    custom_id=spec.custom_id,
                    input=spec.input,
                    status=spec.status,
                    attempts=1 if done else 0,
                    result=spec.result,
                    error=spec.error,
                    started_at=now if done else None,
                    finished_at=now if done else None,
                )
            )
    return MadeJob(job_id, f"jobs/{job_id}", items)


def generated_job(
    db: str,
    storage_root: Path,
    prompts: list[tuple[str, str]] | None = None,
    *,
    n: int = 2,
    owner: str = LOCAL_OWNER,
    failed: int = 0,
    status: str = JobStatus.SUCCEEDED,
) -> MadeJob:
    """A finished generate job whose images are real PNGs in the local storage folder.

    `prompts` are (scene, prompt) pairs (default: every scene of tests.ui.art with its prompt);
    `failed` more items end failed."""
    prompts = prompts or [(scene, text) for scene, (text, _) in SCENES.items()]
    job_id = new_id("job")
    items = []
    for idx, (scene, prompt) in enumerate(prompts):
        seed = 1000 + 37 * idx
        images = []
        for k in range(n):
            key = f"jobs/{job_id}/images/{idx:08d}_{k}.png"
            path = storage_root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png(paint(scene, seed + k)))
            images.append({"key": key, "uri": path.as_uri(), "seed": seed + k, "index": k})
        items.append(
            ItemSpec(
                input={"prompt": prompt, "n": n, "seed": seed, "cfg_weight": 5.0},
                result={"images": images, "format": "png"},
                custom_id=f"{scene}-{idx}",
            )
        )
    for j in range(failed):
        items.append(
            ItemSpec(
                input={"prompt": f"an impossible prompt {j}", "n": n, "seed": j},
                status=ItemStatus.FAILED,
                error="CUDA out of memory (simulated)",
                custom_id=f"bad-{j}",
            )
        )
    return insert_job(db, "generate", items, owner=owner, status=status, job_id=job_id)
