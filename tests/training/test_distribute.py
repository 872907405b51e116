"""Distributed training: strategy names, TF_CONFIG, two logical CPUs mirrored, two local workers.

The training tests run in subprocesses: TensorFlow fixes its devices and collective ops when its
runtime starts, so a test process that has used TensorFlow cannot split its CPU or join a cluster.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from kidney_lab import errors
from kidney_lab import fileio
from kidney_lab import runs
from kidney_lab.training import distribute
from tests.training.test_engine import MODEL, REPOSITORY, SIZE, train_arguments

# Per-replica batch of the training tests, and the replicas each of them has.
BATCH, REPLICAS = 4, 2
WORKER_TIMEOUT = 240.0


def cluster_config(ports: list[int], kind: str = "worker", index: int = 0, chief: int | None = None) -> str:
    cluster: dict[str, list[str]] = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    if chief is not None:
        cluster["chief"] = [f"127.0.0.1:{chief}"]
    return json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on now (all bound at once, so they differ)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for each in sockets:
            each.bind(("127.0.0.1", 0))
        return [each.getsockname()[1] for each in sockets]
    finally:
        for each in sockets:
            each.close()


def check_distribution(info: runs.RunInfo, strategy: str) -> None:
    """run.json names the strategy, two replicas and the global batch of both."""
    recorded = (info.strategy, info.replicas, info.global_batch_size)
    assert recorded == (strategy, REPLICAS, BATCH * REPLICAS), (
        f"run.json says strategy, replicas, global batch = {recorded}; "
        f"expected {(strategy, REPLICAS, BATCH * REPLICAS)}"
    )


def tail(path: Path, characters: int = 3000) -> str:
    text = path.read_text(errors="replace") if path.is_file() else "(no output file)"
    # TensorFlow's INFO lines bury the error; keep the rest.
    lines = [line for line in text.splitlines() if not line.startswith("I0000")]
    return "\n".join(lines)[-characters:]


# --- strategy names and TF_CONFIG ------------------------------------------------------------


def test_an_unknown_strategy_is_refused_with_the_known_names() -> None:
    known = "auto, one, mirrored, multiworker"
    with pytest.raises(errors.ConfigError, match=f"Unknown strategy 'tpu'; use one of {known}"):
        distribute.check_strategy_name("tpu")


@pytest.mark.parametrize("name", distribute.STRATEGIES)
def test_every_known_strategy_name_is_accepted(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_CONFIG", cluster_config([1111, 2222]))
    assert distribute.check_strategy_name(name) == name


@pytest.mark.parametrize(
    ("tf_config", "message"),
    [
        (None, "needs TF_CONFIG describing the cluster"),
        ("   ", "needs TF_CONFIG describing the cluster"),
        ('{"cluster": {"worker": ["a:1"]', "TF_CONFIG is not valid JSON"),
        ('["a:1", "b:2"]', "needs a 'cluster'"),
        ('{"task": {"type": "worker", "index": 0}}', "needs a 'cluster'"),
        ('{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}', "needs a 'cluster'"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}}', "needs a 'task'"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "needs a 'task'"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "ps", "index": 0}}', "needs a 'task'"),
    ],
    ids=["unset", "blank", "broken-json", "not-an-object", "no-cluster", "addresses-not-a-list",
         "no-task", "index-outside-the-cluster", "job-not-in-the-cluster"],
)
def test_multiworker_with_an_unusable_tf_config_says_how_to_set_it(
    tf_config: str | None, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(errors.ConfigError, match=message) as caught:
        distribute.check_strategy_name("multiworker")
    # Every refusal shows a TF_CONFIG that would work.
    example = '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}'
    assert example in str(caught.value), f"the message does not show a working TF_CONFIG: {caught.value}"
    with pytest.raises(errors.ConfigError, match=message):
        distribute.is_chief("multiworker")


def test_the_other_strategies_ignore_tf_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_CONFIG", "not json")
    for name in ("auto", "one", "mirrored"):
        assert distribute.check_strategy_name(name) == name
        assert distribute.is_chief(name), f"{name} must always write its run files"


@pytest.mark.parametrize(
    ("kind", "index", "with_chief_job", "chief"),
    [
        ("worker", 0, False, True),
        ("worker", 1, False, False),
        ("chief", 0, True, True),
        ("worker", 0, True, False),
        ("worker", 1, True, False),
    ],
    ids=["worker-0-without-chief-job", "worker-1", "chief-task", "worker-0-beside-a-chief",
         "worker-1-beside-a-chief"],
)
def test_is_chief_follows_the_tensorflow_convention(
    kind: str, index: int, with_chief_job: bool, chief: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    chief_port = 3333 if with_chief_job else None
    monkeypatch.setenv("TF_CONFIG", cluster_config([1111, 2222], kind, index, chief=chief_port))
    assert distribute.is_chief("multiworker") is chief, os.environ["TF_CONFIG"]


# --- strategies in this process ------------------------------------------------------------------


def test_auto_on_a_machine_without_several_gpus_is_the_default_strategy() -> None:
    if len(tf.config.list_logical_devices("GPU")) > 1:
        pytest.skip("several GPUs: auto mirrors over them")
    strategy = distribute.make_strategy("auto")
    assert strategy is tf.distribute.get_strategy(), f"auto gave {type(strategy).__name__}"
    assert strategy.num_replicas_in_sync == 1


def test_one_uses_one_device_and_mirrored_uses_every_device() -> None:
    one = distribute.make_strategy("one")
    assert isinstance(one, tf.distribute.OneDeviceStrategy) and one.num_replicas_in_sync == 1
    mirrored = distribute.make_strategy("mirrored")
    assert isinstance(mirrored, tf.distribute.MirroredStrategy)
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    assert mirrored.num_replicas_in_sync == len(devices)


def test_multiworker_after_tensorflow_started_is_refused_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    tf.config.list_logical_devices()  # Starts TensorFlow's runtime in this process, if not yet.
    monkeypatch.setattr(distribute, "_multiworker", None)
    monkeypatch.setenv("TF_CONFIG", cluster_config(free_ports(2)))
    with pytest.raises(errors.ConfigError, match="before TensorFlow starts"):
        distribute.make_strategy("multiworker")


def test_shardable_shards_by_element_and_keeps_the_elements() -> None:
    dataset = tf.data.Dataset.range(10).batch(4)
    sharded = distribute.shardable(dataset)
    assert sharded.options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.DATA
    assert [batch.tolist() for batch in sharded.as_numpy_iterator()] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.parametrize(
    ("images", "replicas", "full_only"), [(33, 1, False), (3, 1, False), (33, 2, True), (32, 2, True)]
)
def test_several_replicas_train_on_full_batches_only(images: int, replicas: int, full_only: bool) -> None:
    assert distribute.full_batches_only("training", images, 8 if replicas > 1 else 4, replicas) is full_only


def test_a_split_smaller_than_one_global_batch_is_refused_with_several_replicas() -> None:
    with pytest.raises(errors.ConfigError, match="validation split has 7 images, fewer than one global batch of 8 "
                       r"\(4 per replica on 2 replicas\); use a smaller --batch-size"):
        distribute.full_batches_only("validation", 7, 8, 2)


# --- training ------------------------------------------------------------------------------------

MIRRORED_SCRIPT = """
import json, sys
from pathlib import Path
import tensorflow as tf

# Two logical CPU devices, before anything starts TensorFlow's runtime.
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from kidney_lab.training import config, engine

steps = []
settings = json.loads(sys.argv[3])
result = engine.train(
    config.TrainConfig(data=Path(sys.argv[1]), workspace=Path(sys.argv[2]), strategy="mirrored", **settings),
    listener=lambda run_id, status: steps.append([status.get("step"), status.get("steps")]),
)
print("RESULT " + json.dumps({"result": result.to_dict(), "steps": steps,
                              "cpus": len(tf.config.list_logical_devices("CPU"))}))
"""


def train_mirrored_on_two_cpus(data: Path, workspace: Path, **overrides) -> tuple[dict, runs.RunRecord]:
    """Train one model with ``mirrored`` on two logical CPUs in a new process; its payload and run."""
    settings = dict(models=[MODEL], epochs=1, image_size=SIZE, weights="none", batch_size=BATCH, **overrides)
    process = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, str(data), str(workspace), json.dumps(settings)],
        cwd=REPOSITORY, env=dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="1"),
        capture_output=True, text=True, timeout=WORKER_TIMEOUT,
    )
    assert process.returncode == 0, f"mirrored training exited {process.returncode}:\n{process.stderr[-3000:]}"
    (line,) = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
    payload = json.loads(line.removeprefix("RESULT "))
    assert payload["cpus"] == REPLICAS, f"the CPU was not split in two: {payload['cpus']} logical CPU devices"
    (record,) = runs.list_runs(workspace)
    return payload, record


def test_mirrored_training_on_two_logical_cpus_uses_both_with_a_scaled_batch(
    phantom_root: Path, tmp_path: Path
) -> None:
    payload, record = train_mirrored_on_two_cpus(phantom_root, tmp_path / "workspace")
    (run,) = payload["result"]["runs"]
    assert run["status"] == runs.COMPLETED, f"the run ended {run['status']}: {run['error']}"
    info = record.info
    check_distribution(info, "mirrored")
    # An epoch is one pass over the training images in full global batches, not per-replica ones.
    expected_steps = info.split_counts["train"] // (BATCH * REPLICAS)
    reported = {steps for step, steps in payload["steps"] if steps}
    assert reported == {expected_steps}, f"steps per epoch {reported}, expected {expected_steps}"
    assert max(step or 0 for step, _ in payload["steps"]) == expected_steps
    predictions = pd.read_csv(record.path / runs.PREDICTIONS_FILE)
    assert len(predictions) == info.split_counts["test"], "predictions.csv does not cover the test split"
    assert [row["epoch"] for row in runs.read_history(record.path / runs.HISTORY_FILE)] == [1]


def test_mirrored_training_survives_a_last_batch_smaller_than_the_replica_count(
    phantom_root: Path, tmp_path: Path
) -> None:
    # A random split of the 48 phantoms with these fractions trains on 33 images: four global
    # batches of 8 and one image, which one replica gets while the other gets none.
    payload, record = train_mirrored_on_two_cpus(
        phantom_root, tmp_path / "workspace", split="random", val_fraction=0.15, test_fraction=0.14
    )
    counts = record.info.split_counts
    assert counts["train"] % (BATCH * REPLICAS) == 1 and counts["val"] >= BATCH * REPLICAS, (
        f"the split no longer has the shape this test needs: {counts}"
    )
    (run,) = payload["result"]["runs"]
    assert run["status"] == runs.COMPLETED, f"the run ended {run['status']}: {run['error']}"
    assert len(pd.read_csv(record.path / runs.PREDICTIONS_FILE)) == counts["test"]


@pytest.mark.slow  # About a minute: two TensorFlow processes share the CPU.
def test_two_local_workers_train_one_run_that_only_the_chief_writes(phantom_root: Path, tmp_path: Path) -> None:
    """Two processes on 127.0.0.1 with the same command and workspace; TF_CONFIG tells them apart."""
    workspace = tmp_path / "workspace"
    ports = free_ports(2)
    processes: list[subprocess.Popen] = []
    outputs: list[tuple[Path, Path]] = []
    temporaries = [tmp_path / f"tmp-{index}" for index in range(2)]
    results = [tmp_path / f"result-{index}.json" for index in range(2)]
    started = time.monotonic()
    try:
        for index in range(2):
            temporaries[index].mkdir()
            out, err = tmp_path / f"worker-{index}.out", tmp_path / f"worker-{index}.err"
            outputs.append((out, err))
            environment = dict(
                os.environ, TF_CONFIG=cluster_config(ports, "worker", index), TMPDIR=str(temporaries[index]),
                PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="1",
            )
            command = [
                sys.executable, "-m", "kidney_lab",
                *train_arguments(phantom_root, workspace, epochs=1),
                "--strategy", "multiworker", "--json", str(results[index]),
            ]
            with out.open("w") as stdout, err.open("w") as stderr:
                processes.append(
                    subprocess.Popen(command, cwd=REPOSITORY, env=environment, stdout=stdout, stderr=stderr)
                )

        def report(headline: str) -> str:
            return headline + "".join(
                f"\n--- worker {index} (exit {process.poll()}) stderr tail:\n{tail(outputs[index][1])}"
                for index, process in enumerate(processes)
            )

        # One worker failing leaves the other waiting for it forever: stop at the first failure.
        while any(process.poll() is None for process in processes):
            failed = [index for index, process in enumerate(processes) if process.poll() not in (None, 0)]
            if failed:
                pytest.fail(report(f"worker {failed[0]} failed"))
            if time.monotonic() - started > WORKER_TIMEOUT:
                pytest.fail(report(f"the workers did not finish within {WORKER_TIMEOUT:.0f} s"))
            time.sleep(0.5)
        codes = [process.returncode for process in processes]
        assert codes == [0, 0], report(f"exit statuses {codes}")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)

    chief, other = (fileio.read_json(path) for path in results)
    # The chief's run is the workspace's only run: the other worker wrote no run there.
    (record,) = runs.list_runs(workspace)
    (chief_run,) = chief["runs"]
    assert chief_run["status"] == runs.COMPLETED, f"chief run {chief_run['status']}: {chief_run['error']}"
    assert Path(chief_run["path"]) == record.path.resolve()
    assert record.state == runs.COMPLETED and record.status["pid"] == processes[0].pid
    info = record.info
    check_distribution(info, "multiworker")
    predictions = pd.read_csv(record.path / runs.PREDICTIONS_FILE)
    assert len(predictions) == info.split_counts["test"], "predictions.csv does not cover the test split"
    assert (record.path / runs.MODEL_FILE).is_file() and (record.path / runs.METRICS_FILE).is_file()
    (epoch,) = runs.read_history(record.path / runs.HISTORY_FILE)
    assert np.isfinite(epoch["loss"]) and np.isfinite(epoch["val_loss"]), epoch

    # The other worker trained too, in a scratch folder of its own that it removed afterwards.
    (other_run,) = other["runs"]
    assert other_run["status"] == runs.COMPLETED, f"worker 1 run {other_run['status']}: {other_run['error']}"
    assert Path(other_run["path"]).is_relative_to(temporaries[1].resolve()), other_run["path"]
    assert list(temporaries[1].iterdir()) == [], "worker 1 left its scratch folder behind"
