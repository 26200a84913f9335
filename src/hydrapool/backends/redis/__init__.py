"""The Redis backend (``redis://`` and ``rediss://`` URLs); needs ``hydrapool[redis]``."""

from hydrapool.backends.redis.backend import RedisBackend, key_base

__all__ = ["RedisBackend", "key_base"]
