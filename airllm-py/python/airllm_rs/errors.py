"""The exceptions airllm_rs raises. Each carries the engine's own message,
which names the file, tensor or setting at fault and the remedy."""


class AirLLMError(Exception):
    """Base of every error the engine raises."""


class ModelError(AirLLMError):
    """The model cannot be used: a missing path, an unknown architecture,
    missing or damaged weights, a config that does not match them."""


class MemoryBudgetError(AirLLMError):
    """The memory budget (``max_memory``) cannot hold the minimum working
    set; the message says what the minimum is made of."""


class RequestError(AirLLMError, ValueError):
    """A bad argument or request: a setting out of range, an unknown
    compression, a prompt longer than the model's context."""


class BackendError(AirLLMError):
    """The compute device failed to start or lacks a feature (a device this
    build does not include, a missing driver)."""


__all__ = ["AirLLMError", "BackendError", "MemoryBudgetError", "ModelError", "RequestError"]
