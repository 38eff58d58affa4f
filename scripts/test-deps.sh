#!/usr/bin/env bash
# Tests of scripts/lib/deps.sh, the checks scripts/install-deps.sh makes before it installs:
# libclang is looked for in small fake directory trees shaped like Debian's packages, so
# that the check is proven to tell Clang's C++ library (libclang-cpp14 alone, which bindgen
# cannot load) from a usable libclang (libclang1-14, libclang-dev); Node.js versions are
# checked on fake `node` programs and a small package-lock.json. Prints
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

# The Node.js check: fake `node` programs answering --version like Debian 12's (18), 13's (20).
fake_node() { # fake_node VERSION_OUTPUT: an executable printing it; prints its path
    local f
    f="$(mktemp -d)/node"
    printf '#!/bin/sh\necho "%s"\n' "$1" >"$f"
    chmod +x "$f"
    echo "$f"
}
check "node v18.19.0 major" 18 "$(node_major "$(fake_node v18.19.0)" || echo none)"
node_at_least "$(fake_node v18.19.0)" 20 && r=yes || r=no
check "Debian 12's node 18 is too old for 20" no "$r"
node_at_least "$(fake_node v20.19.2)" 20 && r=yes || r=no
check "node 20 is enough for 20" yes "$r"
node_at_least "$(fake_node v22.1.0)" 20 && r=yes || r=no
check "node 22 is enough for 20" yes "$r"
node_at_least "$(fake_node "not node")" 0 && r=yes || r=no
check "a node that does not answer like Node.js" no "$r"
node_at_least /nonexistent/node 0 && r=yes || r=no
check "missing node" no "$r"

# The engines entry read from a package-lock.json without node: the package's own, not a
# dependency's nor a nested copy's.
lock="$(mktemp)"
cat >"$lock" <<'LOCK'
{
  "lockfileVersion": 3,
  "packages": {
    "": {
      "dependencies": { "matrix-js-sdk": "36.2.0" }
    },
    "node_modules/jwt-decode": {
      "version": "4.0.0",
      "engines": {
        "node": ">=18"
      }
    },
    "node_modules/matrix-js-sdk": {
      "version": "36.2.0",
      "dependencies": {
        "jwt-decode": "^4.0.0"
      },
      "engines": {
        "node": ">=20.0.0"
      }
    },
    "node_modules/no-engines": {
      "version": "1.0.0"
    },
    "node_modules/x/node_modules/no-engines": {
      "version": "1.0.0",
      "engines": {
        "node": ">=16"
      }
    }
  }
}
LOCK
check "lock: matrix-js-sdk needs node 20" 20 "$(lock_node_engine_major "$lock" matrix-js-sdk || echo none)"
check "lock: jwt-decode needs node 18" 18 "$(lock_node_engine_major "$lock" jwt-decode || echo none)"
check "lock: a package without engines" none "$(lock_node_engine_major "$lock" no-engines || echo none)"
check "lock: a package not there" none "$(lock_node_engine_major "$lock" absent || echo none)"
need="$(lock_node_engine_major tests/clients/js/package-lock.json matrix-js-sdk || echo none)"
[[ "$need" =~ ^[0-9]+$ ]] && r=yes || r="no ($need)"
check "the real lock gives matrix-js-sdk's node major" yes "$r"

# sytest's package list, read from a runner shaped like ../shared/sytest/run.sh.
runner="$(mktemp)"
cat >"$runner" <<'RUNNER'
#!/usr/bin/env bash
PORT_RANGE="${PORT_RANGE:-19800:19899}"
PERL_DEBS=(
  libfuture-perl libio-async-perl
  libjson-perl openssl stunnel4
)
prepare() { :; }
RUNNER
check "sytest: the packages of PERL_DEBS" "libfuture-perl libio-async-perl libjson-perl openssl stunnel4" \
    "$(sytest_packages "$runner" | tr '\n' ' ' | sed 's/ $//')"
printf 'PERL_DEBS=(a b) # one line\n' >"$runner"
check "sytest: a one-line array" "a b" "$(sytest_packages "$runner" | tr '\n' ' ' | sed 's/ $//')"
printf '#!/bin/sh\necho nothing\n' >"$runner"
check "sytest: a runner without the array" none "$(sytest_packages "$runner" || echo none)"
check "debs_missing: a package that cannot exist" "no-such-package-hearth" "$(debs_missing no-such-package-hearth)"

echo "deps: $passed passed, $failed failed"
[[ $failed == 0 ]]
