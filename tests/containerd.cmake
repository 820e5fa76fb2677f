# containerd (Debian's 1.6, its runc shim) with godwit as the runc binary; skipped when
# containerd is not installed.
godwit_test(containerd_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/containerd_test.cc
  LIBS godwit_runtime)
