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
    """Configure and build kernels/csrc with CMake against the installed torch."""

    def build_extension(self, ext):
        import torch  # needs --no-build-isolation: the torch we link against is the one installed

        target = os.path.abspath(self.get_ext_fullpath(ext.name))
        build_temp = os.path.join(os.path.abspath(self.build_temp), ext.name)
        os.makedirs(build_temp, exist_ok=True)
        cfg = "Debug" if self.debug else "Release"
        configure = [
            "cmake", ext.sourcedir,
            f"-DCMAKE_BUILD_TYPE={cfg}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DDUALVAE_OUTPUT={target}",
            f"-DPython_EXECUTABLE={sys.executable}",
        ]
        if os.environ.get("DUALVAE_MARCH"):
            configure.append(f"-DDUALVAE_MARCH={os.environ['DUALVAE_MARCH']}")
        jobs = str(os.cpu_count() or 2)
        subprocess.run(configure, cwd=build_temp, check=True)
        subprocess.run(["cmake", "--build", ".", "--config", cfg, "-j", jobs], cwd=build_temp, check=True)


setup(
    packages=["dualvae", "dualvae.baselines", "dualvae.training", "dualvae.kernels", "dualvae.data",
              "dualvae.experiments"],
    package_dir={"dualvae": "dualvae", "dualvae.kernels": "kernels", "dualvae.data": "data"},
    ext_modules=[CMakeExtension("dualvae.kernels._C", sourcedir=ROOT)],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
