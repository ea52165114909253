"""Build: pure-Python packages plus one CMake-built CPU library (kernels/csrc) placed in dualvae/kernels.

`kernels/` and `data/` are taken names on the package registry, so they are installed only as
`dualvae.kernels` and `dualvae.data` (package_dir below), never as top-level imports.
"""
import os
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


class CMakeExtension(Extension):
    def __init__(self, name, sourcedir):
        super().__init__(name, sources=[])
        self.sourcedir = os.path.abspath(sourcedir)


class CMakeBuild(build_ext):
    """Configure and build kernels/csrc with CMake against the installed torch (CPU or CUDA build)."""

    def build_extension(self, ext):
        # CMakeLists.txt asks this interpreter's torch for its headers and libraries: --no-build-isolation
        # (an isolated build env would pull another torch).
        target = os.path.abspath(self.get_ext_fullpath(ext.name))
        build_temp = os.path.join(os.path.abspath(self.build_temp), ext.name)
        os.makedirs(build_temp, exist_ok=True)
        cfg = "Debug" if self.debug else "Release"
        configure = [
            "cmake", ext.sourcedir,
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DDUALVAE_OUTPUT={target}",
            f"-DPython_EXECUTABLE={sys.executable}",
        ]
        if os.environ.get("DUALVAE_MARCH"):
            configure.append(f"-DDUALVAE_MARCH={os.environ['DUALVAE_MARCH']}")
        jobs = str(os.cpu_count() or 2)
        try:
            subprocess.run(configure, cwd=build_temp, check=True)
            subprocess.run(["cmake", "--build", ".", "--config", cfg, "-j", jobs], cwd=build_temp, check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            # The Python package works without the library (the kernels fall back to the reference on CPU
            # tensors and `import dualvae.kernels` says so once); DUALVAE_REQUIRE_EXT=1 makes it an error.
            if os.environ.get("DUALVAE_REQUIRE_EXT") == "1":
                raise
            print(f"dualvae: WARNING: the C++ CPU library was not built ({exc}); installing without it",
                  file=sys.stderr)


setup(
    packages=["dualvae", "dualvae.baselines", "dualvae.training", "dualvae.kernels", "dualvae.data",
              "dualvae.experiments"],
    package_dir={"dualvae": "dualvae", "dualvae.kernels": "kernels", "dualvae.data": "data"},
    ext_modules=[CMakeExtension("dualvae.kernels._C", sourcedir=ROOT)],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
