#!/usr/bin/env python3
"""The project's own checks of the deployment artefacts, run by scripts/validate-deploy.sh.

  check_deploy.py manifests RENDERED.yaml --seed SEED.yaml [--overlay NAME]
      the rendered kustomize output has the shape of the seed deployment
  check_deploy.py rootfs ROOTFS_DIR --dockerfile Dockerfile
      scripts/build-rootfs.sh's layout matches the Dockerfile's runtime stage
  check_deploy.py smoke ROOTFS_DIR RENDERED.yaml
      the rootfs's binary starts with the rendered ConfigMap + Secret as its environment
      (as the Deployment injects them; data dir and address made local), as uid 10001 when
      run as root, answers /_hearth/health, and exits 0 on SIGTERM within the grace period
  check_deploy.py provisioner RENDERED.yaml --seed SEED.yaml --binary PATH [--drop-in]
      the rendered deploy/kubernetes/nfs-provisioner/base (or its drop-in/ RBAC) matches the
      hearth-nfs-provisioner binary and the seed's nfs-subdir setup: the ConfigMap's TOML
      passes `PATH --check-config`, each share is mounted at its `mount` from the seed's
      server and path, probes and port match `listen`, the StorageClasses are the seed's and
      answered by the config, the RBAC grants exactly what the binary calls

Each prints one line per failed check and exits 1 if any failed.
"""
import argparse
import base64
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request

import yaml

DATA = "/var/lib/matrix-conduit"
UID = 10001
HEALTH = "/_hearth/health"


class Checks:
    def __init__(self, what):
        self.what, self.failed, self.passed = what, [], 0

    def check(self, ok, msg):
        if ok:
            self.passed += 1
        else:
            self.failed.append(msg)
        return ok

    def done(self):
        for m in self.failed:
            print(f"  FAIL {self.what}: {m}")
        print(f"  {self.what}: {self.passed} checks passed, {len(self.failed)} failed")
        return 1 if self.failed else 0


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def by_kind(docs):
    out = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def one(kinds, kind, c):
    items = kinds.get(kind, [])
    c.check(len(items) == 1, f"expected exactly one {kind}, found {len(items)}")
    return items[0] if items else {}


def named(kinds, kind, name, c):
    items = [d for d in kinds.get(kind, []) if d.get("metadata", {}).get("name") == name]
    c.check(len(items) == 1, f"expected one {kind} named {name}, found {len(items)}")
    return items[0] if items else {}


HEARTH_DEPLOYMENT = "conduit-deploy"
HEARTH_SERVICE = "conduit-service"
WELL_KNOWN = "hearth-well-known"


def cmd_manifests(a):
    c = Checks(f"manifests[{a.overlay}]")
    docs = load_docs(a.rendered)
    kinds = by_kind(docs)
    seed = by_kind(load_docs(a.seed))
    seed_cm = seed["ConfigMap"][0]
    seed_secret = seed["Secret"][0]

    ns = one(kinds, "Namespace", c)
    ns_name = ns.get("metadata", {}).get("name")
    for d in docs:
        if d["kind"] != "Namespace":
            c.check(d["metadata"].get("namespace") == ns_name,
                    f"{d['kind']}/{d['metadata']['name']} is in namespace {d['metadata'].get('namespace')!r}, "
                    f"not the Namespace {ns_name!r}")

    # ConfigMap: the seed's name and every key of the seed's ConfigMap.
    cm = one(kinds, "ConfigMap", c)
    c.check(cm.get("metadata", {}).get("name") == seed_cm["metadata"]["name"],
            f"ConfigMap is named {cm.get('metadata', {}).get('name')!r}, the seed's is {seed_cm['metadata']['name']!r}")
    data = cm.get("data", {})
    missing = sorted(set(seed_cm["data"]) - set(data))
    c.check(not missing, f"ConfigMap lacks the seed's keys {missing}")
    # Beyond the seed's keys only Hearth's own settings (HEARTH_*) may be added.
    extra = sorted(k for k in set(data) - set(seed_cm["data"]) if not k.startswith("HEARTH_"))
    c.check(not extra, f"ConfigMap has keys the seed does not: {extra}")
    c.check(data.get("HEARTH_METRICS_PORT") in (None, "9167"), "metrics port is 9167, matching the container port")
    # `kubectl exec … hearth admin` reaches the server over a socket in the pod's own /tmp
    # (an emptyDir), not on the NFS volume, where a socket may not be creatable.
    c.check(str(data.get("HEARTH_ADMIN_SOCKET", "")).startswith("/tmp/"),
            f"HEARTH_ADMIN_SOCKET is {data.get('HEARTH_ADMIN_SOCKET')!r}, expected a path under the pod's /tmp")
    expected_values = dict(seed_cm["data"])
    if a.overlay == "sqlite":
        expected_values["CONDUIT_DATABASE_BACKEND"] = "sqlite"
    for k, v in expected_values.items():
        c.check(str(data.get(k)) == str(v), f"ConfigMap {k} is {data.get(k)!r}, expected {v!r}")

    # Secret: the seed's name and key, a placeholder value (not the seed's real token).
    secret = one(kinds, "Secret", c)
    c.check(secret.get("metadata", {}).get("name") == seed_secret["metadata"]["name"],
            "Secret is not named like the seed's")
    sdata = secret.get("data", {})
    c.check(set(sdata) >= set(seed_secret["data"]), f"Secret lacks the seed's keys {sorted(set(seed_secret['data']) - set(sdata))}")
    tok = sdata.get("CONDUIT_REGISTRATION_TOKEN", "")
    try:
        plain = base64.b64decode(tok, validate=True).decode()
        c.check("REPLACE" in plain.upper(), "registration token placeholder does not say it must be replaced")
    except Exception:
        c.check(False, "CONDUIT_REGISTRATION_TOKEN is not valid base64")

    # PVC
    pvc = one(kinds, "PersistentVolumeClaim", c)
    spec = pvc.get("spec", {})
    c.check(spec.get("accessModes") == ["ReadWriteOnce"], f"PVC accessModes {spec.get('accessModes')}")
    c.check(spec.get("resources", {}).get("requests", {}).get("storage") == "50Gi", "PVC does not request 50Gi")
    if a.overlay == "nfs-big":
        c.check(spec.get("storageClassName") == "nfs-big", "nfs-big overlay: PVC storageClassName is not nfs-big")
    else:
        c.check("storageClassName" not in spec, f"{a.overlay}: PVC sets storageClassName {spec.get('storageClassName')!r}")

    # Deployment
    c.check(sorted(d["metadata"]["name"] for d in kinds.get("Deployment", [])) == [HEARTH_DEPLOYMENT, WELL_KNOWN],
            "Deployments are not exactly Hearth's and the well-known one")
    dep = named(kinds, "Deployment", HEARTH_DEPLOYMENT, c)
    dspec = dep.get("spec", {})
    c.check(dspec.get("replicas") == 1, f"Deployment replicas is {dspec.get('replicas')}, must be 1")
    c.check(dspec.get("strategy", {}).get("type") == "Recreate", "Deployment strategy is not Recreate")
    pod = dspec.get("template", {}).get("spec", {})
    sel = dspec.get("selector", {}).get("matchLabels", {})
    tlabels = dspec.get("template", {}).get("metadata", {}).get("labels", {})
    c.check(sel and all(tlabels.get(k) == v for k, v in sel.items()), "pod labels do not match the selector")
    c.check(pod.get("terminationGracePeriodSeconds", 30) >= 60, "terminationGracePeriodSeconds < 60")
    psc = pod.get("securityContext", {})
    for k, v in {"runAsNonRoot": True, "runAsUser": UID, "fsGroup": UID, "fsGroupChangePolicy": "OnRootMismatch"}.items():
        c.check(psc.get(k) == v, f"pod securityContext.{k} is {psc.get(k)!r}, expected {v!r}")
    containers = pod.get("containers", [])
    c.check(len(containers) == 1, f"{len(containers)} containers")
    ctr = containers[0] if containers else {}
    c.check(ctr.get("image", "").startswith("hearth"), f"image is {ctr.get('image')!r}")
    ports = {p.get("name"): p.get("containerPort") for p in ctr.get("ports", [])}
    c.check(ports.get("conduit-port") == int(data.get("CONDUIT_PORT", 0) or 0),
            f"containerPort conduit-port {ports.get('conduit-port')} != CONDUIT_PORT {data.get('CONDUIT_PORT')}")
    c.check({"configMapRef": {"name": cm.get("metadata", {}).get("name")}} in ctr.get("envFrom", []),
            "envFrom does not take the ConfigMap")
    env = {e["name"]: e for e in ctr.get("env", [])}
    ref = env.get("CONDUIT_REGISTRATION_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {})
    c.check(ref.get("name") == secret.get("metadata", {}).get("name") and ref.get("key") == "CONDUIT_REGISTRATION_TOKEN",
            "CONDUIT_REGISTRATION_TOKEN is not taken from the Secret")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = ctr.get(probe, {}).get("httpGet", {})
        c.check(get.get("path") == HEALTH and get.get("port") in ("conduit-port", ports.get("conduit-port")),
                f"{probe} is not an httpGet on {HEALTH} at the container port")
    res = ctr.get("resources", {})
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            c.check(r in res.get(kind, {}), f"resources.{kind}.{r} is not set")
    csc = ctr.get("securityContext", {})
    c.check(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem is not true")
    c.check(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation is not false")
    c.check(csc.get("capabilities", {}).get("drop") == ["ALL"], "capabilities are not drop: [ALL]")
    mounts = {m["mountPath"].rstrip("/"): m["name"] for m in ctr.get("volumeMounts", [])}
    vol_name = mounts.get(DATA)
    c.check(vol_name is not None, f"nothing mounted at {DATA}")
    c.check(data.get("CONDUIT_DATABASE_PATH", "").rstrip("/") == DATA, "CONDUIT_DATABASE_PATH is not the mounted path")
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    claim = vols.get(vol_name, {}).get("persistentVolumeClaim", {}).get("claimName")
    c.check(claim == pvc.get("metadata", {}).get("name"), f"data volume claims {claim!r}, not the PVC")

    # Service: 8448 -> the named container port, selecting the pods.
    svc = named(kinds, "Service", HEARTH_SERVICE, c)
    sspec = svc.get("spec", {})
    c.check(any(p.get("port") == 8448 and p.get("targetPort") == "conduit-port" for p in sspec.get("ports", [])),
            "Service does not map 8448 to conduit-port")
    c.check(sspec.get("selector") and all(tlabels.get(k) == v for k, v in sspec["selector"].items()),
            "Service selector does not match the pods")

    # Ingress: TLS for apex + talk, .well-known on the apex, / on talk, all to the Service.
    ing = one(kinds, "Ingress", c)
    ispec = ing.get("spec", {})
    apex = data.get("CONDUIT_SERVER_NAME")
    talk = data.get("CONDUIT_WELL_KNOWN_SERVER", "").rsplit(":", 1)[0]
    c.check(ispec.get("ingressClassName") == "traefik", "ingressClassName is not traefik")
    c.check("cert-manager.io/cluster-issuer" in ing.get("metadata", {}).get("annotations", {}),
            "no cert-manager annotation")
    tls_hosts = {h for t in ispec.get("tls", []) for h in t.get("hosts", [])}
    c.check({apex, talk} <= tls_hosts, f"TLS hosts {sorted(tls_hosts)} do not cover {apex} and {talk}")
    c.check(data.get("CONDUIT_WELL_KNOWN_CLIENT") == f"https://{talk}", "well-known client is not https://<talk host>")
    routes = {}
    for rule in ispec.get("rules", []):
        for p in rule.get("http", {}).get("paths", []):
            routes[(rule.get("host"), p.get("path"))] = p.get("backend", {}).get("service", {})
    svc_name = svc.get("metadata", {}).get("name")
    wk = [s for (h, p), s in routes.items() if h == apex and p.rstrip("/") == "/.well-known/matrix"]
    c.check(wk and wk[0].get("name") == WELL_KNOWN and wk[0].get("port", {}).get("number") == 8448,
            f"no /.well-known/matrix route on {apex} to {WELL_KNOWN}:8448")
    check_well_known(kinds, cm, c)
    root = routes.get((talk, "/"), {})
    c.check(root.get("name") == svc_name and root.get("port", {}).get("number") == 8448,
            f"no / route on {talk} to {svc_name}:8448")
    check_encoded_characters(a, kinds, ing, ns_name, c)
    return c.done()


def check_well_known(kinds, cm, c):
    """The replicated `hearth well-known` Deployment that serves the apex's delegation while
    Hearth restarts: its Service and PodDisruptionBudget select it, it keeps one replica up
    through updates and drains, runs the same image and ConfigMap without the database."""
    dep = named(kinds, "Deployment", WELL_KNOWN, c)
    spec = dep.get("spec", {})
    c.check(spec.get("replicas", 1) >= 2, "the well-known Deployment has fewer than 2 replicas")
    strategy = spec.get("strategy", {})
    c.check(strategy.get("type") == "RollingUpdate" and strategy.get("rollingUpdate", {}).get("maxUnavailable") == 0,
            "the well-known Deployment may take all replicas down in an update")
    labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
    sel = spec.get("selector", {}).get("matchLabels", {})
    c.check(sel and all(labels.get(k) == v for k, v in sel.items()), "well-known pod labels do not match its selector")
    c.check(labels.get("app") != "conduit", "well-known pods would be selected by Hearth's Service")
    pod = spec.get("template", {}).get("spec", {})
    c.check(not pod.get("volumes"), "the well-known pods mount volumes; they need none")
    ctrs = pod.get("containers", [])
    ctr = ctrs[0] if len(ctrs) == 1 else {}
    c.check(ctr.get("args") == ["well-known"], f"well-known container args {ctr.get('args')}")
    c.check(ctr.get("image", "").startswith("hearth"), "the well-known container does not run the Hearth image")
    c.check({"configMapRef": {"name": cm.get("metadata", {}).get("name")}} in ctr.get("envFrom", []),
            "the well-known container does not take the ConfigMap")
    for probe in ("readinessProbe", "livenessProbe"):
        c.check(ctr.get(probe, {}).get("httpGet", {}).get("path") == HEALTH, f"well-known {probe} not on {HEALTH}")
    csc = ctr.get("securityContext", {})
    c.check(csc.get("readOnlyRootFilesystem") is True and csc.get("allowPrivilegeEscalation") is False,
            "the well-known container is not locked down")
    svc = named(kinds, "Service", WELL_KNOWN, c)
    ssel = svc.get("spec", {}).get("selector", {})
    c.check(ssel and all(labels.get(k) == v for k, v in ssel.items()), "the well-known Service does not select its pods")
    c.check(any(p.get("port") == 8448 and p.get("targetPort") == "conduit-port" for p in svc.get("spec", {}).get("ports", [])),
            "the well-known Service does not map 8448 to conduit-port")
    pdb = named(kinds, "PodDisruptionBudget", WELL_KNOWN, c)
    psel = pdb.get("spec", {}).get("selector", {}).get("matchLabels", {})
    c.check(pdb.get("spec", {}).get("minAvailable") == 1 and psel == sel,
            "the well-known PodDisruptionBudget does not keep one of its pods")


# What a Traefik 3.6+ EncodedCharacters middleware may say, and what Matrix paths need: a
# room alias's `#`, `/` in v3 event ids, `%`, `?` and `;` in aliases. Backslash and NUL are
# never needed. (kubernetes-validate has no schema for Traefik's CRDs: this is its check.)
ENCODED_OPTIONS = {"allowEncodedSlash", "allowEncodedBackSlash", "allowEncodedNullCharacter",
                   "allowEncodedSemicolon", "allowEncodedPercent", "allowEncodedQuestionMark",
                   "allowEncodedHash"}
ENCODED_NEEDED = {"allowEncodedSlash", "allowEncodedHash", "allowEncodedPercent",
                  "allowEncodedQuestionMark", "allowEncodedSemicolon"}
ENCODED_NEVER = {"allowEncodedBackSlash", "allowEncodedNullCharacter"}


def check_encoded_characters(a, kinds, ing, ns_name, c):
    """The traefik-3.6 overlay's Middleware, and the Ingress annotation that uses it; no
    other rendering has either."""
    mws = kinds.get("Middleware", [])
    annotation = ing.get("metadata", {}).get("annotations", {}).get("traefik.ingress.kubernetes.io/router.middlewares")
    if a.overlay != "traefik-3.6":
        c.check(not mws and annotation is None, f"{a.overlay}: a Traefik 3.6 middleware outside its overlay")
        return
    c.check(len(mws) == 1, f"expected one Middleware, found {len(mws)}")
    if not mws:
        return
    mw = mws[0]
    c.check(mw.get("apiVersion") == "traefik.io/v1alpha1", f"Middleware apiVersion {mw.get('apiVersion')!r}")
    spec = mw.get("spec", {})
    c.check(list(spec) == ["encodedCharacters"], f"Middleware spec has {sorted(spec)}, expected encodedCharacters")
    opts = spec.get("encodedCharacters", {})
    c.check(set(opts) <= ENCODED_OPTIONS, f"unknown encodedCharacters options {sorted(set(opts) - ENCODED_OPTIONS)}")
    c.check(all(isinstance(v, bool) for v in opts.values()), "encodedCharacters options must be booleans")
    c.check(all(opts.get(k) is True for k in ENCODED_NEEDED), f"Matrix paths need {sorted(ENCODED_NEEDED)} allowed")
    c.check(not any(opts.get(k) for k in ENCODED_NEVER), f"{sorted(ENCODED_NEVER)} must stay refused")
    name = mw.get("metadata", {}).get("name")
    c.check(annotation == f"{ns_name}-{name}@kubernetescrd",
            f"the Ingress's router.middlewares is {annotation!r}, expected {ns_name}-{name}@kubernetescrd")


def dockerfile_runtime(path):
    from dockerfile_parse import DockerfileParser

    with open(path, "rb") as f:
        structure = DockerfileParser(fileobj=io.BytesIO(f.read())).structure
    last_from = max(i for i, ins in enumerate(structure) if ins["instruction"] == "FROM")
    rt = structure[last_from + 1:]
    env = {}
    for ins in rt:
        if ins["instruction"] == "ENV":
            for tok in shlex.split(ins["value"]):
                k, _, v = tok.partition("=")
                env[k] = v
    get = lambda name: [ins["value"] for ins in rt if ins["instruction"] == name]
    return {
        "env": env,
        "user": get("USER")[-1].strip(),
        "entrypoint": json.loads(get("ENTRYPOINT")[-1]),
        "exposed_ports": [p if "/" in p else p + "/tcp" for v in get("EXPOSE") for p in v.split()],
        "volumes": [x for v in get("VOLUME") for x in json.loads(v)],
        "stop_signal": get("STOPSIGNAL")[-1].strip(),
        "working_dir": get("WORKDIR")[-1].strip(),
    }


def cmd_rootfs(a):
    c = Checks("rootfs")
    root = a.rootfs
    binary = os.path.join(root, "usr/local/bin/hearth")
    c.check(os.path.isfile(binary) and os.access(binary, os.X_OK), "usr/local/bin/hearth is not an executable file")
    out = subprocess.run([binary, "--version"], capture_output=True, text=True)
    c.check(out.returncode == 0 and out.stdout.startswith("hearth"), f"hearth --version: {out.stdout!r} {out.stderr!r}")
    data = os.path.join(root, DATA.lstrip("/"))
    c.check(os.path.isdir(data), f"{DATA} is missing")
    if os.path.isdir(data) and os.geteuid() == 0:
        st = os.stat(data)
        c.check((st.st_uid, st.st_gid) == (UID, UID), f"{DATA} is owned by {st.st_uid}:{st.st_gid}")
    with open(os.path.join(root, "etc/passwd.hearth")) as f:
        fields = f.read().strip().split(":")
    c.check(len(fields) == 7 and fields[2] == fields[3] == str(UID), f"passwd entry {fields}")
    c.check(fields[5] == DATA and fields[6].endswith("nologin"), f"passwd home/shell {fields[5:]}")
    with open(os.path.join(root, "etc/group.hearth")) as f:
        c.check(f.read().strip().split(":")[2] == str(UID), "group entry gid is not 10001")
    with open(os.path.join(root, "image-manifest.json")) as f:
        m = json.load(f)
    d = dockerfile_runtime(a.dockerfile)
    c.check(m["env"] == d["env"], f"manifest env {m['env']} != Dockerfile ENV {d['env']}")
    c.check(m["user"] == d["user"], f"manifest user {m['user']} != Dockerfile USER {d['user']}")
    c.check(m["entrypoint"] == d["entrypoint"], f"entrypoint {m['entrypoint']} != {d['entrypoint']}")
    c.check(m["exposed_ports"] == d["exposed_ports"], f"ports {m['exposed_ports']} != {d['exposed_ports']}")
    c.check([v.rstrip("/") for v in m["volumes"]] == [v.rstrip("/") for v in d["volumes"]],
            f"volumes {m['volumes']} != {d['volumes']}")
    c.check(m["stop_signal"] == d["stop_signal"], "stop signal differs")
    c.check(m["working_dir"] == d["working_dir"], "working dir differs")
    c.check(m["healthcheck"]["path"] == HEALTH, "manifest health check path")
    return c.done()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def cmd_smoke(a):
    c = Checks(f"smoke[{os.path.basename(a.rendered)}]")
    kinds = by_kind(load_docs(a.rendered))
    data = kinds["ConfigMap"][0]["data"]
    token = base64.b64decode(kinds["Secret"][0]["data"]["CONDUIT_REGISTRATION_TOKEN"]).decode()
    with open(os.path.join(a.rootfs, "image-manifest.json")) as f:
        manifest = json.load(f)
    hearth = [d for d in kinds["Deployment"] if d["metadata"]["name"] == HEARTH_DEPLOYMENT][0]
    grace = hearth["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)

    datadir = tempfile.mkdtemp(prefix="hearth-smoke-")
    port = free_port()
    # As in the pod: the image's env, then the ConfigMap's (envFrom), then the Secret; only
    # the data path and address are made local, since this runs outside a container.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    env.update(manifest["env"])
    env.update({k: str(v) for k, v in data.items()})
    env.update(CONDUIT_REGISTRATION_TOKEN=token, CONDUIT_DATABASE_PATH=datadir,
               CONDUIT_ADDRESS="127.0.0.1", CONDUIT_PORT=str(port))
    # The pod's /tmp is its own; here the channel gets a directory of its own instead.
    if "HEARTH_ADMIN_SOCKET" in env:
        env["HEARTH_ADMIN_SOCKET"] = os.path.join(datadir, "admin.sock")
    argv = [os.path.join(a.rootfs, "usr/local/bin/hearth")]
    if os.geteuid() == 0 and shutil.which("setpriv"):
        os.chown(datadir, UID, UID)
        argv = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "--"] + argv
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, env=env, cwd=datadir, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        status = None
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            try:
                status, body = get(base + HEALTH)
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        c.check(status == 200, f"{HEALTH} answered {status} (process {'exited ' + str(proc.returncode) if proc.poll() is not None else 'running'})")
        if status == 200:
            c.check(json.loads(body) == {"status": "ok"}, f"{HEALTH} body {body!r}")
            st, body = get(base + "/.well-known/matrix/client")
            c.check(st == 200 and json.loads(body).get("m.homeserver", {}).get("base_url")
                    == data["CONDUIT_WELL_KNOWN_CLIENT"], f"/.well-known/matrix/client: {st} {body!r}")
            st, body = get(base + "/.well-known/matrix/server")
            c.check(st == 200 and json.loads(body).get("m.server") == data["CONDUIT_WELL_KNOWN_SERVER"],
                    f"/.well-known/matrix/server: {st} {body!r}")
            # As `kubectl exec deploy/… -- hearth admin …` would: same user, same env.
            made = subprocess.run(argv + ["admin", "create-user", "smoke", "--password", "smoke-pw-1"], env=env,
                                  cwd=datadir, capture_output=True, text=True, timeout=60)
            listed = subprocess.run(argv + ["admin", "list-users"], env=env, cwd=datadir, capture_output=True,
                                    text=True, timeout=60)
            c.check(made.returncode == 0 and "@smoke:" in listed.stdout,
                    f"hearth admin on the running server: {made.stdout}{made.stderr}{listed.stdout}{listed.stderr}")
            print("  smoke: `hearth admin create-user` and `list-users` answered by the running server")
        if proc.poll() is None:
            t = time.time()
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = "killed"
            c.check(rc == 0, f"SIGTERM: exit {rc}")
            print(f"  smoke: served {HEALTH} as uid {UID if argv[0] == 'setpriv' else os.geteuid()}, "
                  f"SIGTERM -> exit {rc} in {time.time() - t:.2f} s")
        backend = data.get("CONDUIT_DATABASE_BACKEND", "rocksdb")
        c.check(os.path.isdir(os.path.join(datadir, backend)), f"no {backend}/ in the data directory")
    finally:
        if proc.poll() is None:
            proc.kill()
        if c.failed:
            log.seek(0)
            sys.stdout.write(log.read().decode(errors="replace")[-3000:])
        shutil.rmtree(datadir, ignore_errors=True)
    smoke_well_known(a, c, argv, env, data)
    return c.done()


def smoke_well_known(a, c, argv, env, data):
    """The same binary as `hearth well-known`, with the same environment but no data
    directory at all: it serves both documents and its health check, and stops on SIGTERM."""
    port = free_port()
    env = dict(env, CONDUIT_PORT=str(port), CONDUIT_DATABASE_PATH="/nonexistent/hearth-well-known")
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv + ["well-known"], env=env, cwd="/", stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        status = None
        deadline = time.time() + 30
        while time.time() < deadline and proc.poll() is None:
            try:
                status, _ = get(base + HEALTH)
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        c.check(status == 200, f"well-known mode: {HEALTH} answered {status}")
        if status == 200:
            st, body = get(base + "/.well-known/matrix/client")
            c.check(st == 200 and json.loads(body).get("m.homeserver", {}).get("base_url")
                    == data["CONDUIT_WELL_KNOWN_CLIENT"], f"well-known mode, client: {st} {body!r}")
            st, body = get(base + "/.well-known/matrix/server")
            c.check(st == 200 and json.loads(body).get("m.server") == data["CONDUIT_WELL_KNOWN_SERVER"],
                    f"well-known mode, server: {st} {body!r}")
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = "killed"
            c.check(rc == 0, f"well-known mode, SIGTERM: exit {rc}")
            print(f"  smoke: `hearth well-known` served both documents without a database, SIGTERM -> exit {rc}")
    finally:
        if proc.poll() is None:
            proc.kill()
        if c.failed:
            log.seek(0)
            sys.stdout.write(log.read().decode(errors="replace")[-2000:])

# ---- hearth-nfs-provisioner (deploy/kubernetes/nfs-provisioner)

# Every API call the binary makes, as RBAC (group, resource, verb). The code is the truth:
# crates/nfs-provisioner/tests/e2e.rs records the requests the real binary sends and fails
# when they differ from deploy/kubernetes/nfs-provisioner/base/rbac.yaml; this table makes the
# rendered manifests keep exactly those rules (no more: no wildcard, no `update` on claims).
PROVISIONER_CLUSTER_RULES = {
    ("", "persistentvolumes", v) for v in ("get", "list", "watch", "create", "delete")
} | {
    ("", "persistentvolumeclaims", "list"), ("", "persistentvolumeclaims", "watch"),
    ("storage.k8s.io", "storageclasses", "get"),
    ("events.k8s.io", "events", "create"),
}
PROVISIONER_LEASE_VERBS = {"create", "get", "update"}
# What the binary may do as root: chown (directoryUid/Gid), set modes, remove others' files.
PROVISIONER_CAPABILITIES = {"CHOWN", "DAC_OVERRIDE", "FOWNER"}
CLUSTER_SCOPED = {"Namespace", "StorageClass", "ClusterRole", "ClusterRoleBinding", "PersistentVolume"}
DROP_IN_MOUNT = "/persistentvolumes"
DEFAULT_LEASE = "hearth-nfs-provisioner"


def drop_in_lease_name(provisioner):
    """config.rs `lease_name_for`: the Lease drop-in mode uses for a PROVISIONER_NAME."""
    name = "".join(ch.lower() if ch.isascii() and ch.isalnum() else "-" for ch in provisioner).strip("-")
    name = name[:200].rstrip("-")
    return f"{name}-leader" if name else DEFAULT_LEASE


def rule_triples(rules, c, where):
    out = set()
    for r in rules:
        for field in ("apiGroups", "resources", "verbs"):
            c.check("*" not in r.get(field, []), f"{where}: a wildcard in {field}")
        for g in r.get("apiGroups", []):
            for res in r.get("resources", []):
                for v in r.get("verbs", []):
                    out.add((g, res, v))
    return out


def bound_to(kinds, binding_kind, role_kind, role_name, sa, sa_ns, c):
    ok = any(b.get("roleRef", {}).get("kind") == role_kind and b["roleRef"].get("name") == role_name
             and {"kind": "ServiceAccount", "name": sa, "namespace": sa_ns} in b.get("subjects", [])
             for b in kinds.get(binding_kind, []))
    c.check(ok, f"no {binding_kind} gives {role_kind}/{role_name} to ServiceAccount {sa_ns}/{sa}")


def check_lease_role(kinds, role_ns, lease_names, sa, c):
    """A namespaced Role on Leases: `create`, and get/update limited to the Lease names."""
    roles = [r for r in kinds.get("Role", [])
             if any("leases" in ru.get("resources", []) for ru in r.get("rules", []))]
    c.check(len(roles) == 1, f"expected one Role on leases, found {len(roles)}")
    if not roles:
        return
    role = roles[0]
    c.check(role["metadata"].get("namespace") == role_ns,
            f"the Lease Role is in {role['metadata'].get('namespace')!r}, the Lease in {role_ns!r}")
    triples = rule_triples(role.get("rules", []), c, "Role")
    c.check(triples == {("coordination.k8s.io", "leases", v) for v in PROVISIONER_LEASE_VERBS},
            f"the Lease Role grants {sorted(triples)}, expected leases {sorted(PROVISIONER_LEASE_VERBS)}")
    named_rules = [r for r in role.get("rules", []) if r.get("resourceNames")]
    names = {n for r in named_rules for n in r["resourceNames"]}
    c.check(set(lease_names) <= names, f"the Lease Role's resourceNames {sorted(names)} lack {sorted(lease_names)}")
    c.check(all("create" not in r.get("verbs", []) for r in named_rules),
            "`create` with resourceNames never matches (the name is in the body): it must be its own rule")
    bound_to(kinds, "RoleBinding", "Role", role["metadata"]["name"], sa, role_ns, c)


def seed_shares(seed):
    """The seed's nfs-subdir containers: [(PROVISIONER_NAME, NFS_SERVER, NFS_PATH)], and its volumes."""
    dep = seed["Deployment"][0]
    pod = dep["spec"]["template"]["spec"]
    out = []
    for ctr in pod["containers"]:
        env = {e["name"]: e.get("value") for e in ctr.get("env", [])}
        out.append((env["PROVISIONER_NAME"], env["NFS_SERVER"], env["NFS_PATH"]))
    return out, dep, pod


def cmd_provisioner(a):
    c = Checks("provisioner[drop-in]" if a.drop_in else "provisioner")
    docs = load_docs(a.rendered)
    kinds = by_kind(docs)
    seed = by_kind(load_docs(a.seed))
    shares_of_seed, seed_dep, _ = seed_shares(seed)
    ns = seed_dep["metadata"]["namespace"]
    for d in docs:
        want = None if d["kind"] in CLUSTER_SCOPED else ns
        c.check(d["metadata"].get("namespace") == want,
                f"{d['kind']}/{d['metadata']['name']} has namespace {d['metadata'].get('namespace')!r}, expected {want!r}")
    if a.drop_in:
        return check_drop_in(kinds, seed, shares_of_seed, ns, c)

    c.check([n["metadata"]["name"] for n in kinds.get("Namespace", [])] == [ns], f"the Namespace is not {ns}")
    cm = one(kinds, "ConfigMap", c)
    text = cm.get("data", {}).get("provisioner.toml", "")
    c.check(bool(text), "the ConfigMap has no provisioner.toml")
    config = check_config_with_binary(a.binary, text, c)

    dep = one(kinds, "Deployment", c)
    spec = dep.get("spec", {})
    c.check(spec.get("replicas") == 1, f"replicas is {spec.get('replicas')}, expected 1")
    c.check(spec.get("strategy", {}).get("type") == "Recreate", "strategy is not Recreate")
    sel = spec.get("selector", {}).get("matchLabels", {})
    labels = spec.get("template", {}).get("metadata", {}).get("labels", {})
    c.check(sel and all(labels.get(k) == v for k, v in sel.items()), "pod labels do not match the selector")
    pod = spec.get("template", {}).get("spec", {})
    sa = pod.get("serviceAccountName")
    c.check(sa in [s["metadata"]["name"] for s in kinds.get("ServiceAccount", [])], f"ServiceAccount {sa!r} is not here")
    c.check(pod.get("automountServiceAccountToken", True) is True, "the service account token is not mounted")
    ctrs = pod.get("containers", [])
    c.check(len(ctrs) == 1, f"{len(ctrs)} containers, expected 1")
    ctr = ctrs[0] if ctrs else {}
    c.check(ctr.get("image", "").startswith("hearth-nfs-provisioner:") or "@" in ctr.get("image", ""),
            f"image {ctr.get('image')!r} is not the hearth-nfs-provisioner image as `images:` sets it")
    env = {e["name"]: e for e in ctr.get("env", [])}
    c.check(env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
            "POD_NAME is not the pod's name from the downward API")
    c.check("NFS_SERVER" not in env, "NFS_SERVER is set: drop-in variables do not belong with a configuration file")
    check_config_mount(ctr, pod, cm, c)
    mounts = {m["mountPath"].rstrip("/"): m for m in ctr.get("volumeMounts", [])}
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    check_security(pod, ctr, c)
    res = ctr.get("resources", {})
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            c.check(r in res.get(kind, {}), f"resources.{kind}.{r} is not set")
    if config is None:
        return c.done()

    # Shares: each mounted at its `mount`, from its server and path; the same shares as the seed.
    shares = config.get("share", [])
    for sh in shares:
        m = mounts.get(sh["mount"].rstrip("/"))
        c.check(m is not None, f"share {sh['name']!r}: nothing is mounted at {sh['mount']}")
        if m is None:
            continue
        c.check(not m.get("readOnly"), f"share {sh['name']!r} is mounted read-only")
        nfs = vols.get(m["name"], {}).get("nfs", {})
        c.check((nfs.get("server"), nfs.get("path")) == (sh["server"], sh["path"]),
                f"share {sh['name']!r} is {sh['server']}:{sh['path']}, its mount holds {nfs.get('server')}:{nfs.get('path')}")
    nfs_vols = {v["name"] for v in vols.values() if "nfs" in v}
    c.check(nfs_vols <= {m["name"] for m in mounts.values()}, "an NFS volume is not mounted")
    c.check({(s["server"], s["path"]) for s in shares} == {(srv, p) for _, srv, p in shares_of_seed},
            f"the shares are not the seed's {sorted((srv, p) for _, srv, p in shares_of_seed)}")

    # Health: the port `listen` names, probes on /healthz and /readyz.
    port = int(config.get("listen", "0.0.0.0:8080").rsplit(":", 1)[1])
    ports = {p.get("name"): p.get("containerPort") for p in ctr.get("ports", [])}
    c.check(port in ports.values(), f"listen port {port} is not a containerPort ({ports})")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get_ = ctr.get(probe, {}).get("httpGet", {})
        p = ports.get(get_.get("port"), get_.get("port"))
        c.check(get_.get("path") == path and p == port, f"{probe} is not GET {path} on port {port}")

    # StorageClasses: the seed's, unchanged, each answered by the config and landing on one share.
    answered = set(config.get("provisioner-names", [])) | {n for s in shares for n in s.get("provisioner-names", [])}
    classes = {sc["metadata"]["name"]: sc for sc in kinds.get("StorageClass", [])}
    c.check(set(classes) == {sc["metadata"]["name"] for sc in seed["StorageClass"]},
            f"StorageClasses {sorted(classes)} are not the seed's")
    for seed_sc in seed["StorageClass"]:
        name = seed_sc["metadata"]["name"]
        sc = classes.get(name, {})
        for field in ("provisioner", "parameters", "reclaimPolicy", "volumeBindingMode", "mountOptions",
                      "allowVolumeExpansion"):
            c.check(sc.get(field) == seed_sc.get(field),
                    f"StorageClass {name}: {field} is {sc.get(field)!r}, the seed's {seed_sc.get(field)!r} "
                    "(provisioner and parameters cannot change on an existing class)")
        prov = sc.get("provisioner")
        c.check(prov in answered, f"StorageClass {name}: provisioner {prov!r} is not answered by the config")
        picked = (sc.get("parameters") or {}).get("share")
        landing = [s["name"] for s in shares if (s["name"] == picked if picked else prov in s.get("provisioner-names", []))]
        if not picked and not landing and len(shares) == 1:
            landing = [shares[0]["name"]]
        c.check(len(landing) == 1, f"StorageClass {name} lands on shares {landing}, expected exactly one")
        seed_share = [(srv, p) for n, srv, p in shares_of_seed if n == prov]
        got = [(s["server"], s["path"]) for s in shares if s["name"] in landing]
        c.check(got == seed_share, f"StorageClass {name} lands on {got}, the seed served it from {seed_share}")
    # Volumes nfs-subdir made carry its provisioner names: they must stay ours to delete.
    may_delete = answered | set(config.get("provisioned-by", []))
    for n, _, _ in shares_of_seed:
        c.check(n in may_delete, f"volumes provisioned by {n!r} (the seed's) would not be deleted")

    # RBAC: exactly the binary's calls, bound to its service account; Leases where it elects.
    crs = [r for r in kinds.get("ClusterRole", [])]
    c.check(len(crs) == 1, f"expected one ClusterRole, found {len(crs)}")
    if crs:
        triples = rule_triples(crs[0].get("rules", []), c, "ClusterRole")
        c.check(triples == PROVISIONER_CLUSTER_RULES,
                f"ClusterRole grants {sorted(triples - PROVISIONER_CLUSTER_RULES)} beyond the binary's calls and "
                f"lacks {sorted(PROVISIONER_CLUSTER_RULES - triples)}")
        bound_to(kinds, "ClusterRoleBinding", "ClusterRole", crs[0]["metadata"]["name"], sa, ns, c)
    le = config.get("leader-election", {})
    if le.get("enabled", True):
        check_lease_role(kinds, le.get("namespace", dep.get("metadata", {}).get("namespace")),
                         [le.get("lease-name", DEFAULT_LEASE)], sa, c)
    return c.done()


def check_config_with_binary(binary, text, c):
    """`hearth-nfs-provisioner --config FILE --check-config`, as the pod would read it; the parsed TOML."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(text)
        path = f.name
    try:
        run = subprocess.run([binary, "--config", path, "--check-config"], capture_output=True, text=True,
                             timeout=30, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        c.check(run.returncode == 0, f"--check-config refused the ConfigMap's provisioner.toml: {run.stdout}{run.stderr}")
        if run.returncode == 0:
            print(f"  provisioner: `{os.path.basename(binary)} --check-config` accepts the ConfigMap")
    finally:
        os.unlink(path)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        c.check(False, f"provisioner.toml is not TOML: {e}")
        return None


def check_config_mount(ctr, pod, cm, c):
    """The container reads the ConfigMap's provisioner.toml at the path its --config names."""
    args = ctr.get("args", [])
    env = {e["name"]: e.get("value") for e in ctr.get("env", [])}
    path = args[args.index("--config") + 1] if "--config" in args[:-1] else env.get("NFS_PROVISIONER_CONFIG")
    c.check(bool(path), "neither --config nor NFS_PROVISIONER_CONFIG names the configuration file")
    if not path:
        return
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    for m in ctr.get("volumeMounts", []):
        if os.path.dirname(path) == m["mountPath"].rstrip("/"):
            ref = vols.get(m["name"], {}).get("configMap", {}).get("name")
            c.check(ref == cm.get("metadata", {}).get("name"), f"{m['mountPath']} is not the ConfigMap")
            c.check(os.path.basename(path) in cm.get("data", {}), f"the ConfigMap has no key {os.path.basename(path)}")
            return
    c.check(False, f"nothing is mounted where --config points ({path})")


def check_security(pod, ctr, c):
    psc, csc = pod.get("securityContext", {}), ctr.get("securityContext", {})
    c.check(csc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation is not false")
    c.check(csc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem is not true")
    c.check(not csc.get("privileged"), "the container is privileged")
    caps = csc.get("capabilities", {})
    c.check(caps.get("drop") == ["ALL"], "capabilities are not drop: [ALL]")
    c.check(set(caps.get("add", [])) <= PROVISIONER_CAPABILITIES,
            f"capabilities beyond {sorted(PROVISIONER_CAPABILITIES)}: {sorted(set(caps.get('add', [])) - PROVISIONER_CAPABILITIES)}")
    seccomp = csc.get("seccompProfile", psc.get("seccompProfile", {}))
    c.check(seccomp.get("type") == "RuntimeDefault", "no RuntimeDefault seccomp profile")


def check_drop_in(kinds, seed, shares_of_seed, ns, c):
    """drop-in/: what the seed's service account lacks, for the seed's Deployment on this image."""
    sa = seed["ServiceAccount"][0]["metadata"]["name"]
    seed_rules = rule_triples(seed["ClusterRole"][0]["rules"], c, "the seed's ClusterRole")
    crs = kinds.get("ClusterRole", [])
    granted = set()
    for cr in crs:
        granted |= rule_triples(cr.get("rules", []), c, "ClusterRole")
        bound_to(kinds, "ClusterRoleBinding", "ClusterRole", cr["metadata"]["name"], sa, ns, c)
    c.check(granted == PROVISIONER_CLUSTER_RULES - seed_rules,
            f"drop-in ClusterRole grants {sorted(granted)}; the seed lacks {sorted(PROVISIONER_CLUSTER_RULES - seed_rules)}")
    check_lease_role(kinds, ns, [drop_in_lease_name(n) for n, _, _ in shares_of_seed], sa, c)
    for kind in ("Deployment", "StorageClass", "ConfigMap"):
        c.check(kind not in kinds, f"drop-in/ carries a {kind}: it only adds RBAC to the seed's setup")
    return c.done()



def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("manifests")
    m.add_argument("rendered")
    m.add_argument("--seed", required=True)
    m.add_argument("--overlay", default="base")
    r = sub.add_parser("rootfs")
    r.add_argument("rootfs")
    r.add_argument("--dockerfile", required=True)
    s = sub.add_parser("smoke")
    s.add_argument("rootfs")
    s.add_argument("rendered")
    pr = sub.add_parser("provisioner")
    pr.add_argument("rendered")
    pr.add_argument("--seed", required=True)
    pr.add_argument("--binary", required=True)
    pr.add_argument("--drop-in", action="store_true")
    a = ap.parse_args()
    return {"manifests": cmd_manifests, "rootfs": cmd_rootfs, "smoke": cmd_smoke,
            "provisioner": cmd_provisioner}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
