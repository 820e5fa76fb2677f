#!/usr/bin/env bash
# The image layer alone: BlobWriter raw/zstd to tmpfs, crc32c, verification and reads, as ratios
# to single-core memcpy measured in the same run. IMAGES_BENCH_MIB sets the size (default 1024).
set -euo pipefail
"${BUILD:-build}/bench/images_bench" "${IMAGES_BENCH_MIB:-1024}" /dev/shm
