"""Build the one optional extension, ``kiro_fast._eventstream``.

``KIRO_FAST_NO_EXTENSIONS=1`` (or a non-CPython interpreter) builds a pure-Python
package. Otherwise the extension is required: a failed compile fails the build, so a
broken toolchain cannot silently produce a slow install.
``KIRO_FAST_CYTHON_TRACE=1`` builds with line tracing and writes the annotate HTML.
"""

import os
import platform
import sys

from setuptools import setup

NO_EXTENSIONS = bool(os.environ.get("KIRO_FAST_NO_EXTENSIONS")) or (
    platform.python_implementation() != "CPython"
)
TRACE = bool(os.environ.get("KIRO_FAST_CYTHON_TRACE"))


def extensions() -> list:
    if NO_EXTENSIONS:
        print("*** kiro_fast: pure Python build (KIRO_FAST_NO_EXTENSIONS) ***", file=sys.stderr)
        return []
    from Cython.Build import cythonize
    from setuptools import Extension

    macros = [("CYTHON_TRACE", "1")] if TRACE else []
    ext = Extension(
        "kiro_fast._eventstream",
        ["kiro_fast/_eventstream.pyx"],
        define_macros=macros,
        extra_compile_args=["-O3"],
    )
    print("*** kiro_fast: accelerated build (Cython event-stream decoder) ***", file=sys.stderr)
    return cythonize(
        [ext],
        language_level=3,
        annotate=TRACE,
        compiler_directives={"embedsignature": True, "linetrace": TRACE},
    )


setup(ext_modules=extensions())
