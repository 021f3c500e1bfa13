"""HTTP handlers, one module per area. Handlers stay thin: decode, call one use case, encode.

They never build error responses; ``app.py`` maps every ``BrokerError`` to problem details.
"""
