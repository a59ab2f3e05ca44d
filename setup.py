"""Build glue that pyproject.toml cannot express: the Cython extensions from ext/ and the
C sources of bpf/ shipped inside the package (bcc compiles them at load time)."""
from setuptools import setup
from setuptools.extension import Extension
from Cython.Build import cythonize

extensions = [
    Extension("ebpflb._flowhash", ["ext/flowhash.pyx"]),
    Extension("ebpflb._maglev", ["ext/maglev.pyx"]),
    Extension("ebpflb._statsagg", ["ext/statsagg.pyx"]),
]

setup(
    packages=["ebpflb", "ebpflb.cli", "ebpflb.dataplane", "ebpflb.lab", "ebpflb.sources",
              "ebpflb.bpf"],
    package_dir={"ebpflb.bpf": "bpf"},
    package_data={"ebpflb.bpf": ["*.c", "*.h"]},
    ext_modules=cythonize(extensions, language_level=3),
)
