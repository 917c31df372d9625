"""The admin HTTP API (litestar, ``/v1``): dealers, keys, stations, packages, customers."""
