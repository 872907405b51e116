"""Which devices train a model: one device, several GPUs, or several machines.

``auto`` mirrors over every GPU when there are several and otherwise uses the default (one
device); ``one`` pins one device; ``mirrored`` mirrors over every GPU, or over every logical
CPU device when there is no GPU (how the tests run it); ``multiworker`` trains on several
machines that each run the same command, with ``TF_CONFIG`` naming the cluster and this
worker's place in it (:func:`is_chief` says which worker writes the run files). The batch size
of a config is per replica: the global batch is that times the number of replicas.

A multi-worker strategy configures TensorFlow's collective ops, which is possible only before
TensorFlow's runtime starts in the process (before its first op, dataset or device query): call
:func:`make_strategy` before using TensorFlow; it builds that strategy before it asks TensorFlow
anything, once per process. With several replicas every batch must be full
(:func:`full_batches_only`).
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from kidney_lab import errors

STRATEGIES = ("auto", "one", "mirrored", "multiworker")

# The one MultiWorkerMirroredStrategy of this process (collective ops are configured only once).
_multiworker: tf.distribute.Strategy | None = None


def check_strategy_name(name: str) -> str:
    """Return ``name`` if it is a known strategy.

    Raises:
        kidney_lab.errors.ConfigError: an unknown name, or ``multiworker`` without a usable
            ``TF_CONFIG`` (the message shows one).
    """
    if name not in STRATEGIES:
        raise errors.ConfigError(f"Unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}.")
    if name == "multiworker":
        _cluster_config()
    return name


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy for ``name`` (see the module docstring).

    ``multiworker`` configures the process's collective ops, which TensorFlow allows only
    before its runtime starts (before the first op, dataset or device query): call this first
    in the process. Its strategy is made once per process and returned again on later calls.
    """
    global _multiworker
    check_strategy_name(name)
    if name == "multiworker":
        if _multiworker is None:
            try:
                _multiworker = _MultiWorkerStrategy()
            except RuntimeError as error:
                if "program startup" not in str(error):
                    raise
                raise errors.ConfigError(
                    "--strategy multiworker must be set up before TensorFlow starts in this "
                    "process; start a new process for multi-worker training."
                ) from None
        return _multiworker
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "one":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.MirroredStrategy([device.name for device in tf.config.list_logical_devices("CPU")])
    raise AssertionError(f"unhandled strategy {name!r}")


class _MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """``MultiWorkerMirroredStrategy`` whose ``reduce`` accepts what Keras 3's ``fit`` passes it.

    With more than one worker, Keras 3 (3.15 still; keras-team/keras#20585) calls
    ``strategy.reduce`` in two ways this strategy refuses:

    - on the first batch of ``fit``, a tuple of per-replica values, in one call ("Attempt to
      convert a value (PerReplica...)"): each value is reduced in turn instead, in the same
      order on every worker;
    - on each step's logs, per-replica scalars with ``axis=0`` ("Invalid reduction dimension 0
      for input with 0 dimensions"): a scalar is reduced across replicas only (``axis=None``),
      which is the mean Keras means.
    """

    def reduce(self, reduce_op, value, axis=None):  # noqa: D102 - as tf.distribute.Strategy.reduce
        reduce_one = super().reduce

        def one(item):
            if item is None:
                return None
            local = item.values[0] if isinstance(item, tf.distribute.DistributedValues) else item
            scalar = getattr(getattr(local, "shape", None), "rank", None) == 0
            return reduce_one(reduce_op, item, None if scalar else axis)

        if isinstance(value, (tuple, list, dict)):
            return tf.nest.map_structure(one, value)
        return one(value)


def is_chief(name: str) -> bool:
    """Whether this process writes the run files: always, except non-chief multi-workers.

    With ``multiworker`` the chief is the ``chief`` task, or worker 0 when the cluster has no
    ``chief`` job (TensorFlow's convention).
    """
    if name != "multiworker":
        return True
    config = _cluster_config()
    kind, index = config["task"]["type"], config["task"]["index"]
    if kind == "chief":
        return True
    return kind == "worker" and index == 0 and "chief" not in config["cluster"]


def full_batches_only(subset: str, images: int, global_batch: int, replicas: int) -> bool:
    """Whether the ``subset`` dataset must drop its last, partial batch: with several replicas.

    With several replicas a partial batch fails training in two ways: its images are split over
    the replicas, so with fewer images than replicas some replica gets an empty batch (on CPU
    "input depth must be evenly divisible by filter depth"); and when it is the first batch,
    Keras adds the replicas' unequal batches together to build the model ("Inputs to operation
    AddN ... must have the same size and shape"). Dropping it loses fewer images than one global
    batch: other ones each epoch in training, the same few in validation.

    Raises:
        kidney_lab.errors.ConfigError: several replicas and fewer images than one global batch.
    """
    if replicas <= 1:
        return False
    if images < global_batch:
        raise errors.ConfigError(
            f"The {subset} split has {images} images, fewer than one global batch of {global_batch} "
            f"({global_batch // replicas} per replica on {replicas} replicas); use a smaller --batch-size."
        )
    return True


def shardable(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Let a multi-worker strategy shard ``dataset`` by element (it is not read from files)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


_TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}} '
    "(the same cluster on every machine, each with its own task index)"
)


def _cluster_config() -> dict:
    """``TF_CONFIG`` parsed and checked; a ConfigError that says how to set it otherwise."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        raise errors.ConfigError(
            f"--strategy multiworker needs TF_CONFIG describing the cluster, e.g. {_TF_CONFIG_EXAMPLE}."
        )
    try:
        config = json.loads(text)
    except ValueError as error:
        raise errors.ConfigError(
            f"TF_CONFIG is not valid JSON ({error}); set it to one JSON object such as {_TF_CONFIG_EXAMPLE}."
        ) from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster or not all(
        isinstance(addresses, list) and addresses for addresses in cluster.values()
    ):
        raise errors.ConfigError(
            "TF_CONFIG needs a 'cluster' that maps job names to lists of host:port addresses, "
            f"e.g. {_TF_CONFIG_EXAMPLE}."
        )
    task = config.get("task")
    kind = task.get("type") if isinstance(task, dict) else None
    index = task.get("index", 0) if isinstance(task, dict) else None
    valid_index = isinstance(index, int) and not isinstance(index, bool)
    if kind not in cluster or not valid_index or not 0 <= index < len(cluster[kind]):
        raise errors.ConfigError(
            "TF_CONFIG needs a 'task' naming this process's job and its index in the cluster "
            f"(got {task!r} for jobs {sorted(cluster)}), e.g. {_TF_CONFIG_EXAMPLE}."
        )
    return {"cluster": cluster, "task": {"type": kind, "index": index}}
