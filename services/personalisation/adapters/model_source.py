"""Where Decide servers find the learned model: the learner's latest checkpoint in Redis
(`learning_store.load_current`, which holds the key layout). Each server checks for a new
version every few seconds and swaps it in without a restart; a decision names the version
it used."""

from __future__ import annotations

import logging
import threading
import time

import redis
from prometheus_client import Counter, Gauge

from services.personalisation.adapters.learning_store import current_version, load_current
from services.personalisation.domain.learning import Model

log = logging.getLogger(__name__)

MODEL_LOADS = Counter(
    "cx_personalisation_model_loads",
    "Model versions a Decide server loaded, by result (loaded, failed)",
    ["result"],
)
MODEL_SEQUENCE = Gauge(
    "cx_personalisation_model_sequence", "Sequence number of the model version in use"
)


class ModelSource:
    def __init__(self, client: redis.Redis, key_prefix: str, vw_args: str) -> None:
        self.client = client
        self.prefix = key_prefix
        self.vw_args = vw_args
        self._model: Model | None = None
        self._lock = threading.Lock()
        self._error = ""
        # A version that failed to load is not tried again (the learner writes a new one).
        self._failed_version = ""
        self.loaded_at_ms = 0

    @property
    def current(self) -> Model | None:
        return self._model

    def refresh(self) -> None:
        """Loads the learner's current checkpoint when its version is new. A checkpoint
        that cannot be loaded keeps the model in use and is counted."""
        with self._lock:
            try:
                version = current_version(self.client, self.prefix)
            except redis.RedisError as exc:
                self._error = f"Redis: {exc}"
                return
            if not version or (self._model is not None and self._model.version == version):
                self._error = ""
                return
            if version == self._failed_version:
                return
            try:
                checkpoint = load_current(self.client, self.prefix)
                if checkpoint is None:
                    return
                version = checkpoint.info.version
                model = Model(self.vw_args, version, checkpoint.model_bytes)
            except (redis.RedisError, LookupError, TypeError, RuntimeError) as exc:
                MODEL_LOADS.labels("failed").inc()
                self._failed_version = version
                self._error = f"model {version} not loaded: {exc}"
                log.warning("%s", self._error)
                return
            # The previous model is not finished here: a decision may still hold it; it
            # goes when the last reference does.
            self._model = model
            self.loaded_at_ms = int(time.time() * 1000)
            self._error = ""
            MODEL_LOADS.labels("loaded").inc()
            MODEL_SEQUENCE.set(checkpoint.info.sequence)
            log.info("model %s loaded", version)

    def healthy(self) -> bool:
        """False when the latest checkpoint could not be read or loaded (decisions then use
        the model in use, or the static rules without one)."""
        return not self._error

    def close(self) -> None:
        with self._lock:
            if self._model is not None:
                self._model.close()
                self._model = None
