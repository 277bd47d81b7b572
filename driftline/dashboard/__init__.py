"""The Streamlit dashboard: pages over the REST API, never over the stores.

The embedded event store belongs to the API process, and a dashboard on another machine
has only a URL and a key anyway, so everything shown here arrives through `api.Api`.
`launch.start()` runs the app in its own process (`driftline dashboard`).
"""
