# The image layer: unit tests, the `godwit inspect` test, the fuzz target and the benchmark.
godwit_test(images_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/images_test.cc
  LIBS godwit_images)
godwit_test(images_inspect_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/images_inspect_test.cc
  LIBS godwit_images)
