"""Streamlit side of Personalized Digit Studio: cached engine objects, shared widget state,
figures and views that the pages in `app_pages/` lay out. Everything here calls `engine`; the engine
never imports this package.
"""
