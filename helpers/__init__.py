"""helpers: the small companion library of the transfer-learning course.

One module per concern, imported by the notebooks and by the ``retrain`` and
``label_image`` commands:

- ``settings``     where caches live, the quick setting, seeds, quiet TensorFlow
- ``data``         find, download, list and split image folders; decode images robustly
- ``backbones``    pretrained feature extractors through TensorFlow Hub (bundled EfficientNet-Lite)
- ``bottlenecks``  cached bottleneck features computed with a tf.data pipeline
- ``retrain``      train the final layer (library + ``retrain`` command)
- ``evaluation``   accuracy with intervals, per-class and medical metrics, thresholds
- ``unknown``      scores and rules that let a closed-set model answer "unknown"
- ``plots`` / ``widgets``  the figures and interactive controls the notebooks show
- ``notebooks``    run the notebooks headless (the course run and the timing script)

Importing this package sets three TensorFlow environment switches *before*
TensorFlow is imported (they have no effect afterwards):
``TF_USE_LEGACY_KERAS=1`` so that ``tensorflow_hub.KerasLayer`` works with
TensorFlow 2.21, ``TF_ENABLE_ONEDNN_OPTS=1`` (oneDNN's CPU kernels: the network runs
about twice as fast as with TensorFlow's own; a re-run still gives the same digits,
only two different code paths may differ in about the sixth digit), and
``TF_CPP_MIN_LOG_LEVEL=2`` to keep TensorFlow's log noise out of the lessons.
A value you set yourself is kept. It then imports TensorFlow with its native
start-up lines held back (``settings.quiet_native_logs``: "could not find cuda
drivers", "failed call to cuInit" and the like reach file descriptor 2 before
``TF_CPP_MIN_LOG_LEVEL`` applies, and would open every notebook in red).
"""
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

try:
    from helpers.settings import import_tensorflow as _import_tensorflow

    _import_tensorflow()
except ImportError:  # TensorFlow not installed: the modules that need it say so when used
    pass
