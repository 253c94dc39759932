"""The dashboard in keys mode: `?key=` (or the login form) sets an HttpOnly cookie that pages,
thumbnails, partials and the JSON API accept; a key sees only its own jobs."""

from __future__ import annotations

from api.deps import KEY_COOKIE, UI_HEADER
from janus_batch import keys
from janus_batch.states import ItemStatus, JobStatus
from tests.ui.helpers import ItemSpec, generated_job, insert_job


def test_key_in_the_url_sets_a_cookie_and_is_dropped(client, set_env, database_url, storage_root):
    set_env(auth_mode="keys")
    alice_row, alice = keys.create_key(database_url, "alice")
    job = generated_job(database_url, storage_root, [("lake", "a lake")], n=1, owner=alice_row.id)

    login = client.get("/ui")
    assert login.status_code == 401 and "API key required" in login.text
    assert client.get(f"/ui/jobs/{job.id}").status_code == 401
    assert client.get("/ui/partials/jobs").status_code == 401
    assert client.get(f"/ui/thumbs/{job.id}/images/00000000_0.png").status_code == 401

    redirect = client.get(f"/ui/jobs/{job.id}?key={alice}&after=3", follow_redirects=False)
    assert redirect.status_code == 303
    assert redirect.headers["location"] == f"/ui/jobs/{job.id}?after=3"
    cookie = redirect.headers["set-cookie"]
    assert cookie.startswith(f"{KEY_COOKIE}=") and "HttpOnly" in cookie
    assert "samesite=lax" in cookie.lower() and "Path=/" in cookie

    page = client.get(f"/ui/jobs/{job.id}")
    assert page.status_code == 200 and "a lake" in page.text
    assert "Log out" in page.text
    assert client.get(f"/ui/thumbs/{job.id}/images/00000000_0.png").status_code == 200
    assert client.get("/ui/partials/jobs").status_code == 200
    listed = client.get("/v1/jobs").json()["data"]  # the JSON API accepts the cookie too
    assert [j["id"] for j in listed] == [job.id]

    client.post("/ui/logout")
    assert client.get("/ui").status_code == 401


def test_a_key_sees_only_its_own_jobs(client, set_env, database_url, storage_root):
    set_env(auth_mode="keys")
    alice_row, _ = keys.create_key(database_url, "alice")
    bob_row, bob = keys.create_key(database_url, "bob")
    job = generated_job(database_url, storage_root, [("night", "night")], n=1, owner=alice_row.id)
    caption = insert_job(
        database_url,
        "caption",
        [ItemSpec({"image": "s3://b/k", "uri": "storage:inputs/x.png"})],
        owner=alice_row.id,
    )
    bobs = insert_job(database_url, "caption", [], owner=bob_row.id)

    client.cookies.set(KEY_COOKIE, bob)
    assert job.id not in client.get("/ui").text and bobs.id in client.get("/ui").text
    page = client.get(f"/ui/jobs/{job.id}")
    assert page.status_code == 404 and "Job not found" in page.text
    assert client.get(f"/ui/partials/jobs/{job.id}").status_code == 404
    assert client.get(f"/ui/thumbs/{job.id}/images/00000000_0.png").status_code == 404
    assert client.get(f"/ui/inputs/{caption.id}/0").status_code == 404
    assert client.get(f"/v1/jobs/{job.id}").status_code == 404

    client.cookies.set(KEY_COOKIE, "jb_not-a-real-key")
    assert client.get("/ui").status_code == 401
    assert client.get("/v1/jobs").status_code == 401


def test_bad_key_and_login_form(client, set_env, database_url):
    set_env(auth_mode="keys")
    row, key = keys.create_key(database_url, "carol")
    bad = client.get("/ui?key=jb_wrong", follow_redirects=False)
    assert bad.status_code == 303 and "set-cookie" not in bad.headers
    shown = client.get(bad.headers["location"])
    assert shown.status_code == 401 and "invalid or revoked" in shown.text

    wrong = client.post("/ui/login", data={"key": "jb_nope", "next": "/ui"}, follow_redirects=False)
    assert wrong.status_code == 303 and "login_error=1" in wrong.headers["location"]
    evil = client.post(
        "/ui/login", data={"key": key, "next": "https://evil.example/"}, follow_redirects=False
    )
    assert evil.status_code == 303 and evil.headers["location"] == "/ui"
    assert client.get("/ui").status_code == 200

    keys.revoke_key(database_url, row.id)
    assert client.get("/ui").status_code == 401


def test_cookie_cancel_needs_the_dashboard_header(client, set_env, database_url):
    set_env(auth_mode="keys")
    row, key = keys.create_key(database_url, "dave")
    job = insert_job(
        database_url,
        "generate",
        [ItemSpec({"prompt": "p"}, status=ItemStatus.PENDING)],
        owner=row.id,
        status=JobStatus.RUNNING,
    )
    client.cookies.set(KEY_COOKIE, key)
    forged = client.post(f"/v1/jobs/{job.id}/cancel")  # what a cross-site form could send
    assert forged.status_code == 403
    assert forged.json()["error"]["field"] == UI_HEADER
    ok = client.post(f"/v1/jobs/{job.id}/cancel", headers={UI_HEADER: "1"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["status"] in ("cancelling", "finalizing", "cancelled")


def test_open_mode_needs_no_key(client):
    assert client.get("/ui").status_code == 200
    assert "Log out" not in client.get("/ui").text
    redirect = client.get("/ui?key=whatever&kind=caption", follow_redirects=False)
    assert redirect.status_code == 303 and redirect.headers["location"] == "/ui?kind=caption"
    assert "set-cookie" not in redirect.headers
