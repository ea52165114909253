"""A bench script run as on a host without DALI: a None entry in sys.modules makes `import nvidia.dali` raise."""
import sys

_RUN = ("import runpy, sys; sys.modules['nvidia.dali'] = None; sys.argv = [sys.argv[1], *sys.argv[2:]]; "
        "runpy.run_path(sys.argv[0], run_name='__main__')")


def without_dali(script: str, *args: str) -> list[str]:
    """The command line that runs `script` with `args` in this Python, nvidia.dali unimportable."""
    return [sys.executable, "-c", _RUN, script, *args]
