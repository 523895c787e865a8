"""The web dashboard's files (``static/``): a page, its script and style, and the vendored
uPlot charts. Served by :mod:`api.routes.dashboard`; nothing here is built or fetched at run
time, and the page talks to the API only through the public ``/v1`` endpoints."""
