"""The kidney_lab app: ``streamlit run streamlit_app.py``.

A short entry file: the page config, the navigation over the pages listed in
``pages/_navigation.py`` (one line there adds a page), the shared sidebar, and the page itself run
inside an error guard, so that no page ever shows a stack trace. Once the page is drawn, the
models the Compare page opens with start loading in the background (once per process), so the
first scan uploaded is about as fast as the next; nothing here imports TensorFlow.
"""

import streamlit as st

from kidney_lab.explain import preload
from pages import common

st.set_page_config(page_title="kidney_lab", page_icon=":material/nephrology:", layout="wide")
common.keep_tensorflow_state()

page = st.navigation(
    [st.Page(info.path, title=info.title, icon=info.icon, default=index == 0)
     for index, info in enumerate(common.PAGES)]
)
common.sidebar()
with common.shown_errors(f"showing the {page.title} page"), common.inside_app():
    page.run()
preload.start_warm_up(common.workspace())
