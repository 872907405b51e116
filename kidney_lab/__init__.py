"""kidney_lab: honest comparison of deep-learning classifiers of kidney CT slices.

The package follows the data's path, one job per module:
``data`` (find, audit, split, read, pipeline, phantoms) -> ``models`` -> ``training`` ->
``runs`` -> ``evaluation`` -> ``explain`` -> ``cli``. Nothing in it imports Streamlit.
"""

import os

# TensorFlow's C++ start-up chatter (CPU instruction sets, CUDA probing) is not for users.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
