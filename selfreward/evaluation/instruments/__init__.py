"""The instruments, one module each; every module here is imported by `evaluation.registered()`."""
