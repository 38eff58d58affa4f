#!/usr/bin/env bash
# Tests of scripts/lib/deps.sh, the checks scripts/install-deps.sh makes before it installs:
# libclang is looked for in small fake directory trees shaped like Debian's packages, so
# that the check is proven to tell Clang's C++ library (libclang-cpp14 alone, which bindgen
# cannot load) from a usable libclang (libclang1-14, libclang-dev). Prints
# "N passed, N failed" and fails when any case does.
set -uo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/deps.sh
source scripts/lib/deps.sh

passed=0
failed=0
check() { # check NAME EXPECTED ACTUAL
    if [[ "$2" == "$3" ]]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAILED: $1: expected '$2', got '$3'" >&2
    fi
}
tree() { # tree FILE...: a fresh fake root holding these (empty) files; prints its path
    local root f
    root="$(mktemp -d)"
    for f in "$@"; do
        mkdir -p "$root/$(dirname "$f")"
        : >"$root/$f"
    done
    echo "$root"
}
found() { find_libclang "$1" || echo none; }

# Debian 12 with only llvm-14 and libclang-cpp14 (the brand-new machine of issue 15).
root=$(tree usr/lib/llvm-14/lib/libclang-cpp.so.14 usr/lib/llvm-14/lib/libLLVM-14.so \
    usr/lib/x86_64-linux-gnu/libclang-cpp.so.14)
check "libclang-cpp alone is not libclang" none "$(found "$root")"

# libclang1-14: the runtime library, which bindgen's runtime loading accepts.
root=$(tree usr/lib/llvm-14/lib/libclang-cpp.so.14 usr/lib/x86_64-linux-gnu/libclang-14.so.1)
check "libclang1-14 is found" "$root/usr/lib/x86_64-linux-gnu/libclang-14.so.1" "$(found "$root")"

# libclang-dev's unversioned name under the LLVM directory.
root=$(tree usr/lib/llvm-14/lib/libclang.so)
check "libclang.so under llvm-14" "$root/usr/lib/llvm-14/lib/libclang.so" "$(found "$root")"

# arm64 boards.
root=$(tree usr/lib/aarch64-linux-gnu/libclang-cpp.so.14 usr/lib/aarch64-linux-gnu/libclang.so.1)
check "arm64 libclang.so.1" "$root/usr/lib/aarch64-linux-gnu/libclang.so.1" "$(found "$root")"

# /usr/local builds of LLVM.
root=$(tree usr/local/llvm-18/lib/libclang.so.18)
check "/usr/local/llvm-18" "$root/usr/local/llvm-18/lib/libclang.so.18" "$(found "$root")"

# Names that only look like libclang.
root=$(tree usr/lib/libclangBasic.a usr/lib/libclang-cpp.so usr/lib/x86_64-linux-gnu/libclang_rt.asan.so)
check "static and runtime libraries are not libclang" none "$(found "$root")"

check "empty tree" none "$(found "$(tree)")"

# The names clang-sys accepts, one by one.
for n in libclang.so libclang-14.so libclang.so.1 libclang-14.so.1 libclang-14.0.6.so; do
    is_libclang_name "$n" && r=yes || r=no
    check "name $n" yes "$r"
done
for n in libclang-cpp.so.14 libclang-cpp.so libclangAST.so libclang.a; do
    is_libclang_name "$n" && r=yes || r=no
    check "name $n" no "$r"
done

# The compiler check: a missing compiler and one that cannot compile fail it.
compiles c++ /nonexistent/c++ && r=yes || r=no
check "missing C++ compiler" no "$r"
compiles c++ false && r=yes || r=no
check "a C++ compiler that fails" no "$r"

echo "deps: $passed passed, $failed failed"
[[ $failed == 0 ]]
