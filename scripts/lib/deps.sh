# shellcheck shell=bash
# Checks for exactly what building and testing Hearth uses, sourced by scripts/install-deps.sh
# and by its test (scripts/test-deps.sh). Each check looks for the thing that is used, not
# for a file that merely resembles it: Debian's `libclang-cpp14` ships
# `/usr/lib/llvm-14/lib/libclang-cpp.so.14`, which bindgen cannot load, and an earlier
# `libclang*.so*` pattern took it for libclang and skipped the install.

# find_libclang ROOT: print the first libclang that bindgen (clang-sys) would load, and
# succeed; fail quietly when there is none. ROOT is "/" on a real machine; the test points
# it at small fake trees. clang-sys searches, in this order: `LIBCLANG_PATH` (a directory or
# a file), the `bin`, `lib` and `lib64` directories under `llvm-config --prefix`,
# `LD_LIBRARY_PATH`, `LIBRARY_PATH`, then the usual library directories below. It accepts
# the names `libclang.so`, `libclang-*.so`, `libclang.so.*` and `libclang-*.so.*`, except
# names with `-cpp.` in them (`libclang-cpp.so.N` is Clang's C++ library, not libclang).
# The environment and llvm-config are consulted only when ROOT is "/".
find_libclang() {
    local root="${1%/}" dir f
    local -a dirs=()
    if [[ -z "$root" ]]; then
        if [[ -n "${LIBCLANG_PATH:-}" ]]; then
            if [[ -f "$LIBCLANG_PATH" ]]; then
                is_libclang_name "$(basename "$LIBCLANG_PATH")" && { echo "$LIBCLANG_PATH"; return 0; }
            else
                dirs+=("$LIBCLANG_PATH")
            fi
        fi
        local prefix
        if prefix="$("${LLVM_CONFIG_PATH:-llvm-config}" --prefix 2>/dev/null)" && [[ -n "$prefix" ]]; then
            dirs+=("$prefix/bin" "$prefix/lib" "$prefix/lib64")
        fi
        local IFS=:
        # shellcheck disable=SC2206
        dirs+=(${LD_LIBRARY_PATH:-} ${LIBRARY_PATH:-})
        unset IFS
    fi
    local pattern
    # Quoted, so that they are expanded below ROOT and not where the script runs.
    for pattern in '/usr/local/llvm*/lib*' '/usr/local/lib*/*/*' '/usr/local/lib*/*' '/usr/local/lib*' \
        '/usr/lib*/*/*' '/usr/lib*/*' '/usr/lib*'; do
        for dir in "$root"$pattern; do
            [[ -d "$dir" ]] && dirs+=("$dir")
        done
    done
    for dir in "${dirs[@]}"; do
        [[ -n "$dir" && -d "$dir" ]] || continue
        for f in "$dir"/libclang*.so*; do
            [[ -e "$f" ]] || continue
            is_libclang_name "$(basename "$f")" && { echo "$f"; return 0; }
        done
    done
    return 1
}

# is_libclang_name NAME: whether clang-sys accepts NAME as a libclang file name.
is_libclang_name() {
    local name="$1"
    [[ "$name" == *-cpp.* ]] && return 1
    case "$name" in
        libclang.so | libclang-*.so | libclang.so.* | libclang-*.so.*) return 0 ;;
    esac
    return 1
}

# compiles LANG COMPILER: whether COMPILER turns a small program of LANG (c or c++) that
# includes the standard headers RocksDB and SQLite use into an object file.
compiles() {
    local lang="$1" compiler="$2" dir rc
    command -v "$compiler" >/dev/null 2>&1 || return 1
    dir="$(mktemp -d)"
    if [[ "$lang" == c++ ]]; then
        printf '#include <string>\n#include <atomic>\nint main() { std::string s("x"); std::atomic<int> a{1}; return (int)s.size() - a; }\n' >"$dir/t.cc"
        "$compiler" -std=c++17 -c "$dir/t.cc" -o "$dir/t.o" >/dev/null 2>&1
    else
        printf '#include <stdio.h>\n#include <pthread.h>\nint main(void) { return 0; }\n' >"$dir/t.c"
        "$compiler" -c "$dir/t.c" -o "$dir/t.o" >/dev/null 2>&1
    fi
    rc=$?
    rm -rf "$dir"
    return $rc
}

# python_can_make_venvs PYTHON: whether PYTHON can create a venv with pip in it (Debian's
# python3 without python3-venv has `venv` but not `ensurepip`).
python_can_make_venvs() {
    "$1" -c 'import venv, ensurepip' >/dev/null 2>&1
}

# node_major NODE: print the major version of the Node.js binary NODE (`v20.20.2` gives 20);
# fail quietly when it is missing or does not answer `--version` like Node.js.
node_major() {
    local version
    command -v "$1" >/dev/null 2>&1 || return 1
    version="$("$1" --version 2>/dev/null)" || return 1
    [[ "$version" =~ ^v([0-9]+)\.[0-9]+\.[0-9]+ ]] || return 1
    echo "${BASH_REMATCH[1]}"
}

# node_at_least NODE MAJOR: whether NODE runs and its major version is MAJOR or more.
node_at_least() {
    local major
    major="$(node_major "$1")" || return 1
    ((major >= $2))
}

# lock_node_engine_major LOCKFILE PACKAGE: print N from the `"node": ">=N..."` engines entry
# that npm recorded for PACKAGE in LOCKFILE (a package-lock.json, lockfileVersion 2 or 3, as
# npm writes it: one key per line). Read without node, which may not be installed yet. Fails
# when the package or a `>=N` engines entry is not there.
lock_node_engine_major() {
    awk -v key="\"node_modules/$2\": {" '
        { line = $0; sub(/^ +/, "", line) }
        !inside && line == key { inside = 1; next }
        inside && /^    [}]/ { exit }
        inside && /"node": *">= *[0-9]+/ {
            sub(/.*"node": *">= */, ""); sub(/[^0-9].*/, ""); print; found = 1; exit
        }
        END { exit !found }
    ' "$1"
}

# sytest_packages RUN_SH: print, one a line, the Debian packages that sytest's runner
# (../shared/sytest/run.sh) installs with `run.sh setup`: its `PERL_DEBS=( … )` array, read
# without running it. Fails when the file has no such array.
sytest_packages() {
    awk '
        /^PERL_DEBS=\(/ { inside = 1; sub(/^PERL_DEBS=\(/, "") }
        inside {
            done = sub(/\).*/, "")
            for (i = 1; i <= NF; i++) { print $i; found = 1 }
            if (done) exit
        }
        END { exit !found }
    ' "$1"
}

# debs_missing PACKAGE...: print those of the Debian packages that dpkg does not have
# installed (status "install ok installed"), one a line.
debs_missing() {
    local p
    for p in "$@"; do
        [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" == "install ok installed" ]] || echo "$p"
    done
}
