"""Token Broker: policy-aware Smithery service tokens for app users."""

__version__ = "0.2.0"
