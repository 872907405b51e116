"""The models: ``registry`` (the single source of model facts, importable without TensorFlow),
``builders`` (build and load the classifiers with Keras), ``layers`` and ``vit`` (kidney_lab's own
Keras layers) and ``vit_presets`` (the ViT's configuration, without Keras)."""
