"""One module per dashboard page; Streamlit runs each as a script through `st.navigation`.

The folder is not called `pages/`: Streamlit would take such a folder beside the entry
script for its older file-based navigation and open a deep link (/drift) without the
sidebar and pickers the entry script draws.
"""
