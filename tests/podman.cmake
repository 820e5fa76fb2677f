# Podman (+ conmon) with godwit as its OCI runtime; skipped when podman is absent.
godwit_test(podman_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/podman_test.cc
  LIBS godwit_runtime)
