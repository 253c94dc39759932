"""Recording outcomes: one conditional UPDATE per item (the old chunk path) against
`lifecycle.complete` (one UPDATE ... FROM (VALUES ...) per pass), on SQLite and PostgreSQL.

Both sides move the same rows with the same attempt fence and bump the job counters in the
same transaction; each transaction records one pass of `--pass-size` outcomes. Prints items/s
for each and the ratio. A bench, not a test: `python bench/record.py [--items 4000]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import select, update

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from janus_batch import lifecycle
from janus_batch.db import dispose_engines, session_scope
from janus_batch.lifecycle import Outcome
from janus_batch.migrate import upgrade
from janus_batch.models import Item, Job, new_id, utcnow
from janus_batch.states import ItemStatus
from tests import services


def _claimed_job(database_url: str, n: int) -> list[lifecycle.Claimed]:
    job_id = new_id("job")
    with session_scope(database_url) as session:
        lifecycle.create_job(
            session, id=job_id, owner="bench", kind="caption", model="m", params={},
            source=None, idempotency_key=None, output_prefix=f"jobs/{job_id}",
        )  # fmt: skip
    claimed: list[lifecycle.Claimed] = []
    for start in range(0, n, 2000):
        rows = [
            {"idx": i, "input": {"uri": f"s3://b/{i}.png"}}
            for i in range(start, min(n, start + 2000))
        ]
        with session_scope(database_url) as session:
            ids = lifecycle.insert_items(session, job_id, rows)
            claimed += lifecycle.claim(session, job_id, ids, lease_seconds=600)
    return claimed


def _outcomes(claimed: list[lifecycle.Claimed]) -> list[Outcome]:
    return [
        Outcome(c, ItemStatus.SUCCEEDED, result={"caption": f"a photo number {c.idx}"})
        for c in claimed
    ]


def per_item(database_url: str, outcomes: list[Outcome], size: int) -> float:
    """The old path: one conditional UPDATE per item, counters bumped once per pass."""
    started = time.perf_counter()
    for start in range(0, len(outcomes), size):
        batch = outcomes[start : start + size]
        with session_scope(database_url) as session:
            moved: Counter[str] = Counter()
            for o in batch:
                n = session.execute(
                    update(Item)
                    .where(
                        Item.id == o.item.id,
                        Item.status == ItemStatus.RUNNING,
                        Item.attempts == o.item.attempts,
                    )
                    .values(
                        status=o.status,
                        result=o.result,
                        error=o.error,
                        lease_until=None,
                        finished_at=utcnow(),
                    )
                    .execution_options(synchronize_session=False)
                ).rowcount
                moved[o.status] += n
            lifecycle.bump_counts(session, {batch[0].item.job_id: moved})
    return time.perf_counter() - started


def batched(database_url: str, outcomes: list[Outcome], size: int) -> float:
    """`lifecycle.complete`: one statement per pass."""
    started = time.perf_counter()
    for start in range(0, len(outcomes), size):
        with session_scope(database_url) as session:
            lifecycle.complete(session, outcomes[start : start + size])
    return time.perf_counter() - started


def _check(database_url: str, job_id: str, n: int) -> None:
    with session_scope(database_url) as session:
        job = session.scalar(select(Job).where(Job.id == job_id))
    assert job is not None and job.succeeded == n, (job and job.succeeded, n)


def run(name: str, database_url: str, n: int, size: int) -> tuple[str, float, float]:
    upgrade(database_url)
    rates = []
    for recorder in (per_item, batched):
        claimed = _claimed_job(database_url, n)
        seconds = recorder(database_url, _outcomes(claimed), size)
        _check(database_url, claimed[0].job_id, n)
        rates.append(n / seconds)
    dispose_engines()
    return name, rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=4000)
    parser.add_argument("--pass-size", type=int, default=16)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(run("SQLite", f"sqlite:///{tmp}/bench.db", args.items, args.pass_size))
    services.ensure_postgres()
    name, url = services.create_pg_database()
    try:
        rows.append(run("PostgreSQL", url, args.items, args.pass_size))
    finally:
        dispose_engines()
        services.drop_pg_database(name)
    print(f"\nRecording {args.items} outcomes, {args.pass_size} per transaction (one pass)\n")
    print("| database | one UPDATE per item: items/s | one UPDATE per pass: items/s | ratio |")
    print("| --- | --- | --- | --- |")
    for name, old, new in rows:
        print(f"| {name} | {old:,.0f} | {new:,.0f} | **{new / old:.1f}x** |")


if __name__ == "__main__":
    main()
