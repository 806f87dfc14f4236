"""MEET Studio, the Gradio app: ``build_demo(state)`` builds it from a loaded
:class:`~app.state.AppState`; ``app.py`` parses flags, loads the state and launches.

One module per tab (:mod:`app.search_tab`, :mod:`app.redundancy_tab`,
:mod:`app.efficiency_tab`), the API endpoints in :mod:`app.api`, the search logic the tabs
share in :mod:`app.search`; no model math here (that is :mod:`meet`)."""
