"""Distribution strategies: TensorFlow's own ``tf.distribute`` engine, chosen by name.

``--strategy`` picks one entry of :data:`STRATEGIES`:

- ``default``: one device (the GPU if there is one, else the CPU).
- ``mirrored``: ``tf.distribute.MirroredStrategy``, synchronous data parallelism over the
  GPUs of one machine (or over logical CPU devices, see :func:`split_cpu`, for trying it out).
- ``multiworker``: ``tf.distribute.MultiWorkerMirroredStrategy`` over several processes or
  machines, described by the ``TF_CONFIG`` environment variable
  (https://www.tensorflow.org/guide/distributed_training#setting_up_the_tf_config_environment_variable).
- ``tpu``: ``tf.distribute.TPUStrategy`` on a Cloud or Colab TPU.
- ``auto``: ``tpu`` when a TPU is attached (Colab's TPU runtime), ``mirrored`` on several
  GPUs, ``default`` otherwise.

Batch size and learning rate scale with the number of replicas (:func:`scale_for_replicas`):
every replica keeps the profile's batch size, so the global batch is ``batch_size * replicas``
and the learning rate grows by the same factor, the linear scaling rule of Goyal et al. 2017,
"Accurate, Large Minibatch SGD" (arXiv:1706.02677). An epoch then takes ``1 / replicas`` of the
steps, each seeing ``replicas`` times the images.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf


CPU_DEVICES_ENV = "CNNLAB_CPU_DEVICES"
_CREATED: dict[str, tf.distribute.Strategy] = {}


def split_cpu(count: int) -> list[str]:
    """Splits the physical CPU into ``count`` logical devices (to try ``mirrored`` on a CPU).

    Must run before TensorFlow initialises its devices (before any tensor is created).

    Args:
        count: Number of logical CPU devices, at least 1.

    Returns:
        The logical CPU device names, e.g. ``["/device:CPU:0", "/device:CPU:1"]``.

    Raises:
        RuntimeError: If TensorFlow has already initialised its devices with another count;
            run in a fresh process (or set ``$CNNLAB_CPU_DEVICES`` before starting Python).
    """
    import tensorflow as tf
    if count < 1:
        raise ValueError(f"cpu device count must be at least 1, got {count}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError as error:
        current = tf.config.list_logical_devices("CPU")
        if len(current) != count:
            raise RuntimeError(
                f"TensorFlow already initialised {len(current)} CPU device(s); logical devices "
                f"must be configured first: run in a fresh process, e.g. `cnnlab train "
                f"--cpu-devices {count}` or ${CPU_DEVICES_ENV}={count}") from error
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def tpu_resolver():
    """The TPU cluster resolver of an attached TPU, or None when there is no TPU.

    Looks for the environment Colab and Cloud TPUs set (``COLAB_TPU_ADDR``, ``TPU_NAME``) or
    a TPU VM's local accelerator device (``/dev/accel0``, ``tpu="local"``).
    """
    import tensorflow as tf
    try:
        if os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME"):
            return tf.distribute.cluster_resolver.TPUClusterResolver()
        if Path("/dev/accel0").exists():
            return tf.distribute.cluster_resolver.TPUClusterResolver(tpu="local")
    except (ValueError, RuntimeError, tf.errors.NotFoundError):
        return None
    return None


def choose_strategy(has_tpu: bool, gpus: int) -> str:
    """The strategy ``auto`` stands for: ``tpu``, ``mirrored`` (2+ GPUs) or ``default``."""
    if has_tpu:
        return "tpu"
    return "mirrored" if gpus > 1 else "default"


@functools.cache
def _multiworker_strategy_class() -> type:
    """The ``MultiWorkerMirroredStrategy`` subclass below (built on first use: TensorFlow is
    imported only by the commands that need it)."""
    import tensorflow as tf

    class _MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
        """``MultiWorkerMirroredStrategy`` whose ``reduce`` accepts what Keras 3's ``fit`` passes.

        Keras 3 (3.8-3.15) reduces a nested ``(x, y)`` batch in one ``reduce`` call before
        building the model, and per-replica scalar metrics with ``axis=0``; the collective strategy
        handles neither ("Attempt to convert a value (PerReplica...)", keras-team/keras#20585;
        "Invalid reduction dimension 0 for input with 0 dimensions"). This reduces leaf by leaf
        and drops the axis of scalars, which is what both calls mean. A leaf of a dtype that
        collectives cannot add (uint8 images) is a data batch that Keras only needs for its
        shape and dtype: this worker's own batch is returned for it.
        """

        _REDUCIBLE = (tf.bfloat16, tf.float16, tf.float32, tf.float64, tf.int32, tf.int64)

        def reduce(self, reduce_op, value, axis):
            def one(leaf):
                if isinstance(leaf, tf.distribute.DistributedValues):
                    local = self.experimental_local_results(leaf)[0]
                else:
                    local = tf.convert_to_tensor(leaf)
                if local.dtype not in self._REDUCIBLE:
                    return local
                return super(_MultiWorkerMirroredStrategy, self).reduce(
                    reduce_op, leaf, axis if local.shape.rank else None)

            return tf.nest.map_structure(one, value)

    return _MultiWorkerMirroredStrategy


def _default() -> tf.distribute.Strategy:
    import tensorflow as tf

    return tf.distribute.get_strategy()


def _mirrored() -> tf.distribute.Strategy:
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy()
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    # NCCL (the GPU default) does not exist for CPUs: reduce on one device instead.
    return tf.distribute.MirroredStrategy(
        devices=cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())


def _multiworker() -> tf.distribute.Strategy:
    config = os.environ.get("TF_CONFIG")
    if not config:
        raise RuntimeError(
            "--strategy multiworker needs TF_CONFIG, e.g. TF_CONFIG='{\"cluster\": {\"worker\": "
            "[\"host1:12345\", \"host2:12345\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}' "
            "on each worker (https://www.tensorflow.org/guide/distributed_training)")
    try:
        json.loads(config)
    except json.JSONDecodeError as error:
        raise RuntimeError(f"TF_CONFIG is not valid JSON ({error}): {config!r}") from error
    return _multiworker_strategy_class()()


def _tpu() -> tf.distribute.Strategy:
    import tensorflow as tf

    resolver = tpu_resolver()
    if resolver is None:
        raise RuntimeError("--strategy tpu: no TPU found (on Colab choose Runtime > Change "
                           "runtime type > TPU); use --strategy auto or default")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _auto() -> tf.distribute.Strategy:
    import tensorflow as tf

    name = choose_strategy(tpu_resolver() is not None,
                           len(tf.config.list_physical_devices("GPU")))
    return STRATEGIES[name]()


STRATEGIES: dict[str, Callable[[], tf.distribute.Strategy]] = {
    "auto": _auto,
    "default": _default,
    "mirrored": _mirrored,
    "multiworker": _multiworker,
    "tpu": _tpu,
}


def make_strategy(name: str | tf.distribute.Strategy | None = "auto",
                  cpu_devices: int | None = None) -> tf.distribute.Strategy:
    """Creates the strategy ``name`` (a key of :data:`STRATEGIES`); passes a strategy through.

    Args:
        name: Strategy name, an existing strategy, or None for ``default``.
        cpu_devices: Split the CPU into this many logical devices first (see
            :func:`split_cpu`); defaults to ``$CNNLAB_CPU_DEVICES`` if set.

    Returns:
        The strategy; models must be built and compiled inside ``strategy.scope()``.

    Raises:
        KeyError: On an unknown name; the message lists the registry.
        RuntimeError: If the chosen hardware or ``TF_CONFIG`` is missing.
    """
    import tensorflow as tf
    if isinstance(name, tf.distribute.Strategy):
        return name
    name = name or "default"
    if name not in STRATEGIES:
        raise KeyError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    count = cpu_devices or int(os.environ.get(CPU_DEVICES_ENV) or 0)
    if count:
        split_cpu(count)
    if name == "default":  # the strategy in scope, if any (fine_tune inside a user's scope)
        return tf.distribute.get_strategy()
    if name not in _CREATED:  # one per process: a TPU system is initialised once
        _CREATED[name] = STRATEGIES[name]()
    return _CREATED[name]


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """Short name of a strategy for logs and ``args.yaml`` (``MirroredStrategy x2``)."""
    return f"{type(strategy).__name__.lstrip('_')} x{strategy.num_replicas_in_sync}"


def scale_for_replicas(batch_size: int, learning_rate: float, replicas: int
                       ) -> tuple[int, float]:
    """Global batch size and learning rate for ``replicas`` synchronous replicas.

    Each replica keeps ``batch_size`` images per step; the rate scales linearly with the
    global batch (Goyal et al. 2017, arXiv:1706.02677, section 2.1).

    Returns:
        ``(batch_size * replicas, learning_rate * replicas)``.
    """
    return batch_size * replicas, learning_rate * replicas


def _cluster(strategy: tf.distribute.Strategy | None):
    """The multi-worker cluster resolver of a strategy, or None on a single worker."""
    import tensorflow as tf
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None
    resolver = strategy.cluster_resolver
    return resolver if resolver.cluster_spec().as_dict() else None


def is_multi_worker(strategy: tf.distribute.Strategy | None) -> bool:
    """True if the strategy spans several worker processes."""
    return _cluster(strategy) is not None


def worker_index(strategy: tf.distribute.Strategy | None) -> int:
    """Index of this worker in a multi-worker cluster (0 on a single worker)."""
    resolver = _cluster(strategy)
    return int(resolver.task_id or 0) if resolver is not None else 0


def is_chief(strategy: tf.distribute.Strategy | None) -> bool:
    """True for the process that writes checkpoints and models: a single worker, the
    ``chief`` task, or worker 0 of a cluster without a chief (TensorFlow's convention)."""
    resolver = _cluster(strategy)
    if resolver is None:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Shards a dataset by element across workers (each worker reads every file listing).

    The pipelines start from in-memory file lists, not file-reading datasets, so sharding
    by file (the ``AUTO`` policy's first choice) does not apply; ``DATA`` says so up front.
    """
    import tensorflow as tf
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
