"""`python -m driftline.dashboard run APP [streamlit options]`: Streamlit's own command, warmed up.

Streamlit imports a page's modules when the first visitor opens it, so that visitor would
wait a second or more for pandas and Plotly. Importing them (and letting Plotly build its
validators once) before the server starts moves that wait to start-up. Modules that
declare Streamlit caches are left to the server, which must exist before they load.
"""

from __future__ import annotations

import sys


def main() -> int:
    import plotly.graph_objects as go
    from streamlit.web import cli

    import driftline.dashboard.charts  # noqa: F401 - pandas, numpy, plotly

    go.Figure(go.Scatter(x=[0], y=[0])).to_plotly_json()
    cli.main(prog_name="streamlit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
