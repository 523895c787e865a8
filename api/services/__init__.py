"""What the API does, as plain functions of a database session, the caller's tenant, the
settings and typed inputs; ``api.routes`` only translates HTTP to them and back.

A service refuses a request by raising an ``api.services.errors.ServiceError``, which the app
answers with its HTTP status (``api.routes``).
"""
