"""The service core shared by the API and the worker: settings, the database schema, the job
store, the job specification and the broker's producer side. Imports neither torch nor FastAPI
nor anything from ``worker/``.
"""
