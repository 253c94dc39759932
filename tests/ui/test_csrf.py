"""The dashboard's forms against another site: a cross-site POST to log in (signing the victim
in as the attacker) or to log out is refused; its pages carry a Content-Security-Policy under
which no inline code runs, and hold none."""

from __future__ import annotations

import re

import pytest

from api.deps import KEY_COOKIE
from janus_batch import keys
from janus_batch.states import ItemStatus
from tests.ui.helpers import ItemSpec, generated_job, insert_job

CROSS_SITE = [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Referer": "https://evil.example/trap.html"},
    {"Origin": "http://testserver.evil.example"},
]


@pytest.mark.parametrize("headers", CROSS_SITE)
def test_a_cross_site_login_is_refused(client, set_env, database_url, headers):
    set_env(auth_mode="keys")
    _, mallory = keys.create_key(database_url, "mallory")
    forged = client.post(
        "/ui/login", data={"key": mallory, "next": "/ui"}, headers=headers, follow_redirects=False
    )
    assert forged.status_code == 403, forged.text
    assert "set-cookie" not in forged.headers
    assert forged.json()["error"]["field"] == next(iter(headers))
    assert client.get("/ui").status_code == 401  # still signed out, not signed in as mallory


def test_the_login_form_works_from_the_dashboard_itself(client, set_env, database_url):
    set_env(auth_mode="keys")
    _, key = keys.create_key(database_url, "alice")
    form = client.get("/ui")
    assert form.status_code == 401 and 'action="/ui/login"' in form.text
    login = client.post(
        "/ui/login",
        data={"key": key, "next": "/ui"},
        headers={"Origin": "http://testserver", "Referer": "http://testserver/ui"},
        follow_redirects=False,
    )
    assert login.status_code == 303 and login.headers["set-cookie"].startswith(KEY_COOKIE)
    assert client.get("/ui").status_code == 200


@pytest.mark.parametrize("headers", CROSS_SITE)
def test_a_cross_site_logout_is_refused(client, set_env, database_url, headers):
    set_env(auth_mode="keys")
    _, key = keys.create_key(database_url, "alice")
    client.cookies.set(KEY_COOKIE, key)
    forged = client.post("/ui/logout", headers=headers, follow_redirects=False)
    assert forged.status_code == 403 and "set-cookie" not in forged.headers
    assert client.get("/ui").status_code == 200
    mine = client.post(
        "/ui/logout", headers={"Origin": "http://testserver"}, follow_redirects=False
    )
    assert mine.status_code == 303 and KEY_COOKIE in mine.headers["set-cookie"]


INLINE_CODE = re.compile(r"<script(?![^>]*\bsrc=)|<style|\sstyle=|\son[a-z]+=", re.IGNORECASE)


def test_pages_have_a_csp_and_no_inline_code(client, database_url, storage_root):
    generate = generated_job(database_url, storage_root, [("lake", "a lake")], n=1, failed=1)
    caption = insert_job(
        database_url,
        "caption",
        [
            ItemSpec({"image": "https://127.0.0.1:9/x.jpg"}, result={"caption": "a cat"}),
            ItemSpec({"image": "s3://b/k"}, status=ItemStatus.RUNNING),
        ],
    )
    pages = [
        "/ui",
        "/ui?status=running",
        f"/ui/jobs/{generate.id}",
        f"/ui/jobs/{caption.id}",
        "/ui/jobs/job_missing",
        "/ui/partials/jobs",
        f"/ui/partials/jobs/{caption.id}",
    ]
    for path in pages:
        page = client.get(path)
        assert page.headers["content-type"].startswith("text/html"), path
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "style-src 'self'" in policy, policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert "frame-ancestors 'none'" in policy and "form-action 'self'" in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        assert not INLINE_CODE.search(page.text), (path, INLINE_CODE.search(page.text))
    thumb = client.get(f"/ui/thumbs/{generate.id}/images/00000000_0.png")
    assert thumb.status_code == 200 and "sandbox" in thumb.headers["content-security-policy"]
    static = client.get("/ui/static/ui.js")
    assert static.headers["x-content-type-options"] == "nosniff"


def test_the_login_page_has_the_same_policy(client, set_env):
    set_env(auth_mode="keys")
    page = client.get("/ui")
    assert page.status_code == 401
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert not INLINE_CODE.search(page.text)
