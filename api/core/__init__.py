"""The service core shared by the API and the worker: settings, the database schema, the job
store, the job specification, the broker's configuration and producer side, and the resolver of
model references. Imports neither torch nor FastAPI nor anything from ``worker/`` or the rest
of ``api/`` (``tests/test_packages.py`` checks).
"""
