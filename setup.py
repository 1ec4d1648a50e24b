"""dnsd's optional C extension, in setup.py: pyproject.toml's ext-modules table is experimental.

Optional: without a C compiler and the Python headers the install goes on, and dnsd answers
every UDP query in Python (its log says "UDP batching: python"). Everything else is in
pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dnsd.transports._batch",
            sources=["dnsd/transports/_batch.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
