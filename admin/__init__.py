"""The admin console and API: their own Litestar app (``admin.app``) and listener (``admin.server``)."""
