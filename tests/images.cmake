# The image layer: unit tests, the `godwit inspect` test, the fuzz target and the benchmark.
godwit_test(images_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/images_test.cc
  LIBS godwit_images)
godwit_test(images_inspect_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/images_inspect_test.cc
  LIBS godwit_images)
target_compile_definitions(images_inspect_test PRIVATE GODWIT_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
godwit_test(images_external_test
  SOURCES ${CMAKE_CURRENT_SOURCE_DIR}/images_external_test.cc
  LIBS godwit_images)

# The benchmark program (run by scripts/bench.d/15-images.sh).
add_executable(images_bench ${PROJECT_SOURCE_DIR}/bench/images_bench.cc)
target_link_libraries(images_bench PRIVATE godwit_images godwit_common)
set_target_properties(images_bench PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/bench)

# The fuzz target: clang + libFuzzer, built as its own project (see fuzz/CMakeLists.txt), run
# for a short while by ctest from a seed corpus written by images_fuzz_seeds (built with g++).
add_executable(images_fuzz_seeds ${PROJECT_SOURCE_DIR}/fuzz/seeds.cc)
target_link_libraries(images_fuzz_seeds PRIVATE godwit_images godwit_common)
set_target_properties(images_fuzz_seeds PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/fuzz)
find_program(GODWIT_CLANGXX NAMES clang++ clang++-14)
if(GODWIT_CLANGXX)
  include(ExternalProject)
  ExternalProject_Add(images_fuzz_build
    SOURCE_DIR ${PROJECT_SOURCE_DIR}/fuzz
    BINARY_DIR ${PROJECT_BINARY_DIR}/fuzz/clang
    CMAKE_ARGS -DCMAKE_CXX_COMPILER=${GODWIT_CLANGXX} -DCMAKE_BUILD_TYPE=Release
               -DGODWIT_SOURCE_DIR=${PROJECT_SOURCE_DIR} -DGODWIT_BINARY_DIR=${PROJECT_BINARY_DIR}
               -DGODWIT_VERSION=${PROJECT_VERSION}
    BUILD_ALWAYS ON
    INSTALL_COMMAND ""
    DEPENDS godwit_proto)
  add_test(NAME images_fuzz
           COMMAND ${PROJECT_SOURCE_DIR}/fuzz/run_fuzz.sh ${PROJECT_BINARY_DIR}/fuzz/clang/images_fuzz
                   $<TARGET_FILE:images_fuzz_seeds> 20)
  set_tests_properties(images_fuzz PROPERTIES TIMEOUT 120)
else()
  message(WARNING "clang++ not found: the images fuzz target is not built (scripts/setup installs it)")
endif()
