"""The web dashboard served by the API at /ui (Jinja2 pages, a little vanilla JS, no CDN)."""
