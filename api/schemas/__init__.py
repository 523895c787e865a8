"""Response schemas of the HTTP API, and the request bodies only the API reads, per resource:
``XCreate`` in, ``XPublic`` out, every list a ``common.Page``.

Database rows (``api.core.db.models``) are never returned as they are: a public schema says
what a client may see (no server paths, no other tenant's data). The job and comparison
bodies (``JobCreate``, ``ComparisonCreate``) live in ``api.core.job_spec`` instead, because
the worker reads a stored job's spec with them too.
"""
