"""Test-session setup shared by every test file."""
import os

# Triton kernels run on CPU tensors through the interpreter; it must be chosen before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
