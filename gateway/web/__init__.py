"""The gateway's own pages and JSON API under ``/.gateway/`` (a Litestar app)."""
