"""The composition root: the one place that opens a process's parts and wires its apps.

``start`` (:mod:`gateway.root.start`) opens everything a role runs and returns the frozen services;
``worker_app`` and ``admin_app`` (:mod:`gateway.root.apps`) are the ASGI apps the servers run, which
start the services at lifespan start-up and hand them to the data plane, the control app and the admin
app. Reload (:mod:`gateway.root.reload`), readiness (:mod:`gateway.root.readiness`) and close belong
here too, never to a handler. Nothing imports this package but the servers (``gateway/server.py``).
"""
