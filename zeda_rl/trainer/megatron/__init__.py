"""The megatron-core trainer backend (``trainer=megatron``): model, ZEDA router, conversion,
backend. Importing this package does not import megatron; the modules do."""
