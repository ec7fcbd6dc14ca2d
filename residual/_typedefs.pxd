# Shared C types for the compiled modules (sklearn's utils/_typedefs.pxd convention).
from libc.stdint cimport int64_t

ctypedef float float32_t
ctypedef double float64_t
ctypedef Py_ssize_t intp_t
