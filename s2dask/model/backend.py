"""The deep-learning backend: the only module that imports Keras' backends (TensorFlow, JAX,
PyTorch) or calls their APIs.

Everything else asks this module: :func:`require_keras` (a quiet import with an install
hint), :func:`load_keras_model` (safe mode), :func:`configure_threads` (the backend's thread
pools in this process), :func:`worker_devices` (the accelerators a process sees) and
:func:`compile_forward` (the compiled, fixed-shape forward pass) and :func:`compile_outputs`
(what a job writes, computed where the model runs). All imports happen inside
the functions: ``import s2dask.model.backend`` loads no backend.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ModelError

__all__ = [
    "UNSAFE_MESSAGE",
    "require_keras",
    "load_keras_model",
    "configure_threads",
    "worker_devices",
    "compile_forward",
    "compile_outputs",
    "jax_compilation_cache",
]

#: the refusal of a model that Keras' safe mode would not load (``{path}``: the model file)
UNSAFE_MESSAGE = ("{path} needs unsafe deserialisation (arbitrary code such as a Lambda layer); "
                  "s2dask loads models in Keras safe mode only: rebuild the model from standard layers")

_THREADS_SET: dict[str, int] = {}


def require_keras():
    """Import Keras (and its backend) once, keeping the backend's start-up chatter off stderr.

    TensorFlow writes several native log lines (oneDNN, CUDA probing) to file descriptor
    2 before its log level applies; a command whose errors are one line cannot let them
    through. Set ``S2DASK_NATIVE_LOGS=1`` to see them.

    Raises
    ------
    ModelError
        If Keras or its backend is not installed (with the install hint).
    """
    if "keras" in sys.modules:
        return sys.modules["keras"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        if os.environ.get("S2DASK_NATIVE_LOGS"):
            import keras
        else:
            with _NativeStderrSilenced():
                import keras

                keras.backend.backend()
                if keras.backend.backend() == "tensorflow":
                    import tensorflow as tf

                    tf.config.list_physical_devices("GPU")  # the CUDA probe logs here
    except ImportError as exc:  # pragma: no cover - keras is a core dependency
        raise ModelError(
            "s2dask models need Keras 3 and a backend: pip install 'keras>=3' tensorflow"
        ) from exc
    return keras


class _NativeStderrSilenced:
    """Point file descriptor 2 at /dev/null for the duration (native libraries' logs)."""

    def __enter__(self):
        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)
            os.close(null)
        except OSError:  # no fd 2 (embedded interpreters): nothing to silence
            self._saved = None
        return self

    def __exit__(self, *exc):
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)
        return False


def load_keras_model(path: str | os.PathLike):
    """Deserialise a ``.keras`` file in safe mode (no compile).

    Raises
    ------
    ModelError
        If it needs unsafe deserialisation or is not a loadable Keras model.
    """
    path = Path(path)
    keras = require_keras()
    if keras.backend.backend() == "jax":
        jax_compilation_cache()  # building the layers compiles programs too
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except ValueError as exc:
        text = str(exc)
        if "unsafe" in text.lower() or "lambda" in text.lower() or "safe_mode" in text:
            raise ModelError(UNSAFE_MESSAGE.format(path=path)) from None
        raise ModelError(f"{path} is not a loadable Keras model: {text.splitlines()[0]}") from None
    except Exception as exc:  # zip errors, h5 errors, missing classes ...
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{path} is not a loadable Keras model ({type(exc).__name__}: {first})") from None


def configure_threads(tf_threads: int) -> int:
    """Limit the deep-learning backend's own thread pools in this process.

    Dask runs ``nthreads`` tasks at once in a worker; each forward pass may itself use
    ``tf_threads`` threads, so ``nthreads x tf_threads`` should not exceed the cores.
    Must run before the backend starts its runtime (a worker plugin's ``setup`` does);
    later calls are ignored.

    Parameters
    ----------
    tf_threads
        Intra-op threads of the backend (at least 1).

    Returns
    -------
    int
        The thread count in effect.

    Raises
    ------
    ModelError
        If Keras or its backend is not installed.
    """
    tf_threads = max(1, int(tf_threads))
    # JAX would otherwise preallocate most of the GPU's memory in every worker process
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    if "backend" in _THREADS_SET:
        return _THREADS_SET["backend"]
    keras = require_keras()

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(tf_threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
            # several workers may share a GPU node: take GPU memory as needed, not all at once
            for gpu in tf.config.list_physical_devices("GPU"):
                tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # runtime already initialised in this process
            tf_threads = tf.config.threading.get_intra_op_parallelism_threads() or tf_threads
    elif backend == "torch":
        import torch

        torch.set_num_threads(tf_threads)
    _THREADS_SET["backend"] = tf_threads
    return tf_threads


def worker_devices() -> dict:
    """The deep-learning backend of this process and the accelerators it sees.

    A process that has not imported Keras (an OpenVINO worker) imports nothing to answer:
    ``{"backend": None, "gpus": [], "tf_threads": None}``.

    Raises
    ------
    ModelError
        If Keras or its backend is not installed.
    """
    if "keras" not in sys.modules:
        return {"backend": None, "gpus": [], "tf_threads": None}
    backend = require_keras().backend.backend()
    gpus: list[str] = []
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
        elif backend == "jax":
            import jax

            gpus = [str(d) for d in jax.devices() if d.platform != "cpu"]
        elif backend == "torch":
            import torch

            gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken driver is reported as no device, not as a failed job
        gpus = []
    return {"backend": backend, "gpus": gpus, "tf_threads": _THREADS_SET.get("backend")}


def jax_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache, unless the user configured one.

    A GPU worker otherwise compiles the model's programs anew in every process (5.5 s of
    a 14 s worker start on an H200, benchmarks/gpu_tile.py). The cache is keyed by the
    program, the device and the versions, so a stale entry is never used. It lives in
    ``$S2DASK_JAX_CACHE``, else ``$XDG_CACHE_HOME/s2dask/jax`` (``~/.cache/s2dask/jax``);
    ``S2DASK_JAX_CACHE=off`` leaves it off.

    Returns
    -------
    str or None
        The cache directory in effect.
    """
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:  # JAX_COMPILATION_CACHE_DIR or the user's own jax.config
        return current
    where = os.environ.get("S2DASK_JAX_CACHE", "").strip()
    if where.lower() in ("off", "0", "false", "no"):
        return None
    if not where:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        where = str(Path(base) / "s2dask" / "jax")
    try:
        Path(where).mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: compile as before
        return None
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return where


def compile_forward(model, batch_size: int, n_bands: int, *, jit_compile: bool | None = None):
    """A function ``(batch_size, n_bands) float32 -> (batch_size, n_classes) float32``.

    ``jit_compile`` (TensorFlow only; ``None``: on) compiles the whole forward pass with
    XLA, which fuses the normalisation, bias + ReLU and the softmax into the matmuls'
    neighbours (``benchmarks/forward.py`` measures it against ``False``). The input shape
    is fixed, so XLA compiles once and every pixel gets the same arithmetic.

    Matrix products run in float32 on GPUs too: TensorFlow and JAX would otherwise use
    TensorFloat-32 there (10-bit mantissa), which rounds the normalised reflectances as
    bf16 does and moves pixels on class boundaries. This model's products are far too
    small for the difference in speed to show.

    Parameters
    ----------
    model
        A Keras model taking ``(N, n_bands)`` float32.
    batch_size, n_bands
        The one input shape the function takes.
    jit_compile
        XLA on TensorFlow (``None``: on).
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _tensorflow_forward(model, batch_size, n_bands, jit_compile)
    if backend == "jax":
        forward = _jax_compiled(model, lambda p: p, (batch_size, n_bands))
        return lambda x: np.asarray(forward(x))
    if backend == "torch":
        import torch

        device = next(iter(p.device for p in model.parameters()), torch.device("cpu")) \
            if hasattr(model, "parameters") else torch.device("cpu")

        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                out = model(torch.from_numpy(x).to(device), training=False)
            return out.detach().cpu().numpy()

        return run

    def run(x: np.ndarray) -> np.ndarray:  # any other backend: Keras' own compiled step
        return np.asarray(model.predict_on_batch(x))

    return run


def _tensorflow_forward(model, batch_size: int, n_bands: int, jit_compile: bool | None):
    tf = _tensorflow_float32()
    spec = tf.TensorSpec((batch_size, n_bands), tf.float32)
    jit = True if jit_compile is None else bool(jit_compile)

    @tf.function(input_signature=[spec], jit_compile=jit, reduce_retracing=True)
    def forward(x):
        return model(x, training=False)

    concrete = forward.get_concrete_function()
    concrete(tf.zeros((batch_size, n_bands), tf.float32))  # XLA compiles here, not in a task

    def run(x: np.ndarray) -> np.ndarray:
        return concrete(tf.constant(x)).numpy()

    return run


def compile_outputs(model, batch_size: int, n_bands: int, *, probabilities: bool = False):
    """What a job writes, computed where the model runs (on the GPU of a GPU worker).

    A function ``(n_bands, batch_size) float32 -> (class index, confidence[, probabilities])``,
    all uint8: the index of the largest probability (the first on ties), that probability
    and, if asked, every probability, in rounded percent (``probabilities`` class-major,
    ``(n_classes, batch_size)``, as the job's layers are). The input is band-major, as a
    chunk's rows are, so a batch is ten contiguous copies on the host; 2 bytes a pixel
    come back instead of the probabilities' 20 (5 classes). ``None`` for a backend without
    one (torch): :class:`s2dask.model.blocks.Predictor` then computes them from
    :func:`compile_forward`'s probabilities with numpy, which gives the same values.

    Parameters
    ----------
    model
        A Keras model taking ``(N, n_bands)`` float32 and returning probabilities.
    batch_size, n_bands
        The one input shape the function takes (transposed).
    probabilities
        Also return every class's probability.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax.numpy as jnp

        def percent(p):
            return jnp.clip(jnp.rint(p * 100.0), 0, 100).astype(jnp.uint8)

        def outputs(p):
            out = (jnp.argmax(p, axis=1).astype(jnp.uint8), percent(jnp.max(p, axis=1)))
            return out + (percent(p.T),) if probabilities else out

        compiled = _jax_compiled(model, outputs, (n_bands, batch_size), transposed=True)
        return lambda xt: tuple(np.asarray(a) for a in compiled(xt))
    if backend == "tensorflow":
        tf = _tensorflow_float32()

        def tf_percent(p):
            return tf.cast(tf.clip_by_value(tf.round(p * 100.0), 0.0, 100.0), tf.uint8)

        @tf.function(input_signature=[tf.TensorSpec((n_bands, batch_size), tf.float32)],
                     jit_compile=True, reduce_retracing=True)
        def tf_outputs(xt):
            p = model(tf.transpose(xt), training=False)
            out = (tf.cast(tf.argmax(p, axis=1), tf.uint8), tf_percent(tf.reduce_max(p, axis=1)))
            return out + (tf_percent(tf.transpose(p)),) if probabilities else out

        concrete = tf_outputs.get_concrete_function()
        concrete(tf.zeros((n_bands, batch_size), tf.float32))  # XLA compiles here, not in a task

        def tf_run(xt: np.ndarray) -> tuple[np.ndarray, ...]:
            return tuple(a.numpy() for a in concrete(tf.constant(xt)))

        return tf_run
    return None


def _tensorflow_float32():
    """TensorFlow, with float32 matrix products on GPUs too (no TensorFloat-32)."""
    import tensorflow as tf

    tf.config.experimental.enable_tensor_float_32_execution(False)
    return tf


def _jax_compiled(model, then: Callable[[Any], Any], shape: tuple[int, int], *,
                  transposed: bool = False) -> Callable[[np.ndarray], Any]:
    """``x -> then(model(x))`` jitted by JAX with float32 matrix products (no TF32 on GPUs),
    the model's variables bound, the persistent compilation cache on, compiled now for the
    one input ``shape`` (``transposed``: the input is band-major, ``(n_bands, batch)``)."""
    import jax

    jax_compilation_cache()
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]

    @jax.jit
    def compiled(tv, ntv, x):
        with jax.default_matmul_precision("float32"):
            p, _ = model.stateless_call(tv, ntv, x.T if transposed else x, training=False)
        return then(p)

    compiled(tv, ntv, np.zeros(shape, dtype="float32"))  # compile now, not in a task
    return lambda x: compiled(tv, ntv, x)
