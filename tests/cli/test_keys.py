"""`janus-batch keys` in scripts: `create` prints the secret alone on stdout, refuses empty and
taken names; `list` never cuts an id (plain lines when piped, full-width ids on a terminal);
`revoke` takes a full id or display prefix and says so when given a part of one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from janus_batch import keys
from janus_batch.db import dispose_engines
from janus_batch.migrate import upgrade
from janus_batch.ops.admin import keys_table
from tests.cli.conftest import invoke


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    upgrade(url)
    yield {"JANUS_BATCH_DATABASE_URL": url, "JANUS_BATCH_DATA_DIR": str(tmp_path)}
    dispose_engines()


def test_create_prints_the_secret_alone_on_stdout(env: dict[str, str]) -> None:
    run = invoke(env, "keys", "create", "  ci  ")
    assert run.exit_code == 0, run.stderr
    secret = run.stdout.strip()
    assert run.stdout == secret + "\n" and secret.startswith("jb_")
    [row] = keys.list_keys(env["JANUS_BATCH_DATABASE_URL"])
    assert keys.verify_key(env["JANUS_BATCH_DATABASE_URL"], secret).id == row.id
    assert row.name == "ci"
    assert f"created key {row.id} (ci)" in run.stderr and "shown once" in run.stderr


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "error: a key needs a name"),
        ("   ", "error: a key needs a name"),
        ("a\nb", "error: a key name is one line of printable characters"),
        ("x" * 256, "error: a key name has at most 255 characters, not 256"),
    ],
)
def test_create_refuses_bad_names(env: dict[str, str], name: str, message: str) -> None:
    run = invoke(env, "keys", "create", name)
    assert run.exit_code == 1
    assert run.stdout == ""
    assert run.stderr.startswith(message), run.stderr
    assert keys.list_keys(env["JANUS_BATCH_DATABASE_URL"]) == []


def test_create_refuses_a_name_an_active_key_has(env: dict[str, str]) -> None:
    url = env["JANUS_BATCH_DATABASE_URL"]
    first, _ = keys.create_key(url, "alice")
    run = invoke(env, "keys", "create", "alice")
    assert run.exit_code == 1 and run.stdout == ""
    assert " ".join(run.stderr.split()) == (
        f"error: an active key is already named 'alice' ({first.id}): pick another name, or "
        "revoke that key first"
    )
    keys.revoke_key(url, first.id)
    again = invoke(env, "keys", "create", "alice")  # a revoked key's name is free again
    assert again.exit_code == 0, again.stderr
    assert [k.name for k in keys.list_keys(url)] == ["alice", "alice"]


def test_list_when_piped_is_tab_separated_with_whole_ids(env: dict[str, str]) -> None:
    url = env["JANUS_BATCH_DATABASE_URL"]
    alice, _ = keys.create_key(url, "alice " + "long name " * 20)
    bob, _ = keys.create_key(url, "bob")
    keys.revoke_key(url, bob.id)
    run = invoke({**env, "COLUMNS": "40"}, "keys", "list")
    assert run.exit_code == 0, run.stderr
    lines = [line.split("\t") for line in run.stdout.splitlines()]
    assert lines[0][:5] == ["id", "name", "prefix", "created", "revoked"]
    assert [(line[0], line[1], line[2]) for line in lines[1:]] == [
        (alice.id, alice.name, alice.prefix),
        (bob.id, "bob", bob.prefix),
    ]
    assert lines[1][4] == "" and lines[2][4].startswith("20")


def test_list_on_a_narrow_terminal_keeps_ids_whole(env: dict[str, str]) -> None:
    url = env["JANUS_BATCH_DATABASE_URL"]
    key, _ = keys.create_key(url, "a name long enough to need folding on this terminal")
    console = Console(width=60, force_terminal=True, record=True, color_system=None)
    console.print(keys_table(keys.list_keys(url)))
    text = console.export_text()
    assert key.id in text and key.prefix in text
    assert "…" not in text


def test_revoke_takes_a_full_id_or_display_prefix(env: dict[str, str]) -> None:
    url = env["JANUS_BATCH_DATABASE_URL"]
    alice, alice_secret = keys.create_key(url, "alice")
    bob, _ = keys.create_key(url, "bob")

    partial = invoke(env, "keys", "revoke", alice.id[:8])
    assert partial.exit_code == 1
    assert " ".join(partial.stderr.split()) == (
        f"error: no key '{alice.id[:8]}' ('{alice.id[:8]}' is only the start of {alice.id}): "
        "revoke takes a key's full id (key_...) or its display prefix (jb_ and 7 characters), "
        "as `janus-batch keys list` shows them"
    )
    common = invoke(env, "keys", "revoke", "key_")
    assert common.exit_code == 1
    assert f"is only the start of {alice.id}, {bob.id})" in " ".join(common.stderr.split())
    unknown = invoke(env, "keys", "revoke", "key_nope")
    assert unknown.exit_code == 1 and "no key 'key_nope':" in unknown.stderr
    assert keys.verify_key(url, alice_secret) is not None  # nothing was revoked

    by_prefix = invoke(env, "keys", "revoke", alice.prefix)
    assert by_prefix.exit_code == 0, by_prefix.stderr
    assert by_prefix.stderr.strip() == f"revoked {alice.id} (alice, {alice.prefix})"
    assert keys.verify_key(url, alice_secret) is None
    twice = invoke(env, "keys", "revoke", alice.id)
    assert twice.exit_code == 0
    assert "was already revoked on" in twice.stderr
    assert invoke(env, "keys", "revoke", bob.id).exit_code == 0


def test_revoke_refuses_a_display_prefix_two_keys_share(env: dict[str, str]) -> None:
    from sqlalchemy import update

    from janus_batch.db import session_scope
    from janus_batch.models import ApiKey

    url = env["JANUS_BATCH_DATABASE_URL"]
    one, secret = keys.create_key(url, "one")
    two, _ = keys.create_key(url, "two")
    with session_scope(url) as session:  # a collision of 7 random characters, made here
        session.execute(update(ApiKey).where(ApiKey.id == two.id).values(prefix=one.prefix))
    run = invoke(env, "keys", "revoke", one.prefix)
    assert run.exit_code == 1
    assert f"'{one.prefix}' matches 2 keys; use the key id" in " ".join(run.stderr.split())
    assert keys.verify_key(url, secret) is not None


def test_create_and_update_set_and_show_quotas(env: dict[str, str]) -> None:
    url = env["JANUS_BATCH_DATABASE_URL"]
    env = {**env, "JANUS_BATCH_UPLOAD_BYTES_PER_DAY": "1000000"}  # the settings' default
    run = invoke(env, "keys", "create", "ci", "--max-outstanding-items", "500",
                 "--jobs-per-minute", "10")  # fmt: skip
    assert run.exit_code == 0, run.stderr
    [row] = keys.list_keys(url)
    assert (row.max_outstanding_items, row.jobs_per_minute, row.upload_bytes_per_day) == (
        500,
        10,
        None,
    )
    assert (
        "quotas: max_outstanding_items 500, jobs_per_minute 10, upload_bytes_per_day default "
        "(1,000,000)"
    ) in " ".join(run.stderr.split())

    update = invoke(env, "keys", "update", row.prefix, "--jobs-per-minute", "default",
                    "--upload-bytes-per-day", "0")  # fmt: skip
    assert update.exit_code == 0, update.stderr
    assert " ".join(update.stderr.split()) == (
        f"updated {row.id} (ci): max_outstanding_items 500, jobs_per_minute default "
        "(unlimited), upload_bytes_per_day unlimited"
    )
    [row] = keys.list_keys(url)
    assert (row.max_outstanding_items, row.jobs_per_minute, row.upload_bytes_per_day) == (
        500,
        None,
        0,
    )
    listed = invoke(env, "keys", "list")
    lines = [line.split("\t") for line in listed.stdout.splitlines()]
    assert lines[0][5:] == [
        "max_outstanding_items",
        "jobs_per_minute",
        "upload_bytes_per_day",
        "webhook_url",
    ]
    assert lines[1][5:] == ["500", "default (unlimited)", "unlimited", ""]


def test_quota_options_refuse_bad_values(env: dict[str, str]) -> None:
    url = env["JANUS_BATCH_DATABASE_URL"]
    bad = invoke(env, "keys", "create", "ci", "--jobs-per-minute", "-1")
    assert bad.exit_code == 2 and keys.list_keys(url) == []
    assert "--jobs-per-minute takes a whole number of at least 0 or `default`, not '-1'" in (
        " ".join(bad.stderr.split())
    )
    row, _ = keys.create_key(url, "ci")
    nothing = invoke(env, "keys", "update", row.id)
    assert nothing.exit_code == 2 and "nothing to update" in nothing.stderr
    unknown = invoke(env, "keys", "update", "key_nope", "--jobs-per-minute", "1")
    assert unknown.exit_code == 1 and "no key 'key_nope': update takes" in unknown.stderr
    with pytest.raises(keys.KeyLimitError):
        keys.update_key(url, row.id, {"jobs_per_hour": 1})


def test_create_and_update_set_a_webhook_url_checked_like_a_jobs(env: dict[str, str]) -> None:
    """--webhook-url on create and update (the egress policy, as for a job's webhook_url;
    '' clears it), shown by list."""
    url = env["JANUS_BATCH_DATABASE_URL"]
    run = invoke(env, "keys", "create", "ci", "--webhook-url", "https://hooks.example.com/ci")
    assert run.exit_code == 0, run.stderr
    assert run.stdout.strip().startswith("jb_") and len(run.stdout.splitlines()) == 1
    assert "webhook: https://hooks.example.com/ci" in run.stderr
    [row] = keys.list_keys(url)
    assert row.webhook_url == "https://hooks.example.com/ci"
    listed = [line.split("\t") for line in invoke(env, "keys", "list").stdout.splitlines()]
    assert (listed[0][-1], listed[1][-1]) == ("webhook_url", "https://hooks.example.com/ci")

    moved = invoke(env, "keys", "update", row.prefix, "--webhook-url", "https://b.example.com/h")
    assert moved.exit_code == 0, moved.stderr
    assert "webhook: https://b.example.com/h" in moved.stderr
    assert keys.list_keys(url)[0].webhook_url == "https://b.example.com/h"
    assert keys.list_keys(url)[0].jobs_per_minute is None  # quotas untouched

    for bad, message in [
        ("http://hooks.example.com/ci", "refused by the egress policy: only https URLs"),
        ("https://127.0.0.1/hook", "refused by the egress policy"),
        ("https://example.com/" + "x" * 2048, "longer than 2048"),
    ]:
        refused = invoke(env, "keys", "update", row.id, "--webhook-url", bad)
        assert refused.exit_code == 2, refused.stderr
        said = " ".join(refused.stderr.split())
        assert said.startswith("error: --webhook-url: ") and message in said
        created = invoke(env, "keys", "create", "other", "--webhook-url", bad)
        assert created.exit_code == 2 and created.stdout == ""
    assert [k.webhook_url for k in keys.list_keys(url)] == ["https://b.example.com/h"]

    allowed = {**env, "JANUS_BATCH_EGRESS_ALLOW_HTTP": "true",
               "JANUS_BATCH_EGRESS_ALLOW": "10.20.0.0/16"}  # fmt: skip
    internal = invoke(allowed, "keys", "update", row.id, "--webhook-url", "http://10.20.1.2/h")
    assert internal.exit_code == 0, internal.stderr

    cleared = invoke(env, "keys", "update", row.id, "--webhook-url", "")
    assert cleared.exit_code == 0, cleared.stderr
    assert "webhook: none" in cleared.stderr
    assert keys.list_keys(url)[0].webhook_url is None
