"""Which devices train a model: one device, several GPUs, or several machines.

``auto`` mirrors over every GPU when there are several and otherwise uses the default (one
device); ``one`` pins one device; ``mirrored`` mirrors over every GPU, or over every logical
CPU device when there is no GPU (how the tests run it); ``multiworker`` trains on several
machines that each run the same command, with ``TF_CONFIG`` naming the cluster and this
worker's place in it. The batch size of a config is per replica: the global batch is that
times the number of replicas.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from kidney_lab import errors

STRATEGIES = ("auto", "one", "mirrored", "multiworker")


def check_strategy_name(name: str) -> str:
    """Return ``name`` if it is a known strategy.

    Raises:
        kidney_lab.errors.ConfigError: an unknown name, or ``multiworker`` without
            ``TF_CONFIG``.
    """
    if name not in STRATEGIES:
        raise errors.ConfigError(f"Unknown strategy {name!r}; use one of {', '.join(STRATEGIES)}.")
    if name == "multiworker":
        _cluster_config()
    return name


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The tf.distribute strategy for ``name`` (see the module docstring)."""
    check_strategy_name(name)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "one":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        if gpus:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.MirroredStrategy([device.name for device in tf.config.list_logical_devices("CPU")])
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(name: str) -> bool:
    """Whether this process writes the run files: always, except non-chief multi-workers."""
    if name != "multiworker":
        return True
    task = _cluster_config().get("task", {})
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in _cluster_config().get("cluster", {}))


def shardable(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Let a multi-worker strategy shard ``dataset`` by element (it is not read from files)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _cluster_config() -> dict:
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        raise errors.ConfigError(
            "--strategy multiworker needs TF_CONFIG describing the cluster, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}.'
        )
    try:
        config = json.loads(text)
    except ValueError:
        raise errors.ConfigError("TF_CONFIG is not valid JSON.") from None
    if not isinstance(config, dict) or "cluster" not in config:
        raise errors.ConfigError("TF_CONFIG has no 'cluster' entry.")
    return config
