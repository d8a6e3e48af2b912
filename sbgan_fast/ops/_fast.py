"""Registration of the fast impls. Each backend module imports its heavy dependency (Triton, the
compiled extension) only when the backend is first checked or called."""
from . import _fast_cpp, _fast_triton  # noqa: F401
