"""cluster/: the KubeRay manifests, the `ray up` config, the Dockerfile and the constraints file, checked
without Ray or a Kubernetes cluster.

- every manifest parses, and every field of a RayCluster / RayJob is one the CRDs of the KubeRay release
  the manifests name (tests/fixtures/kuberay-<version>-fields.json, extracted from that release's CRD yaml
  by tests/fixtures/extract_kuberay_fields.py) define at that place;
- what a platform team relies on: token auth, autoscaling, /dev/shm, GPU tolerations, S3 credentials from a
  Secret or a service account and never inline, one RayJob per stage and one for the pipeline, each
  submitting to the RayCluster, with an entry point that the stage's own parser and config loader accept;
- aws.yaml passes the schema `ray up` validates against (ray/autoscaler/ray-schema.json);
- the Dockerfile's GPU image installs the `gpu` extra, both images through cluster/constraints.txt, which
  pins every direct dependency exactly, within pyproject.toml's bounds, at the tested (installed) version.
"""
from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.util
import json
import re
import shlex
import shutil
import tempfile
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = "v1.7.0"
FIELDS = json.loads((ROOT / "tests" / "fixtures" / f"kuberay-{KUBERAY}-fields.json").read_text())
STAGES = ("track", "curate", "pretrain", "evaluate")
KUBE_FILES = sorted(p for p in CLUSTER.glob("*.yaml") if p.name != "aws.yaml")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RAY_PIN = next(Requirement(r) for r in PYPROJECT["dependencies"] if Requirement(r).name == "ray")
RAY_VERSION = str(next(iter(RAY_PIN.specifier)).version)


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def objects(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p in KUBE_FILES for d in docs(p) if d.get("kind") == kind]


def the_raycluster() -> dict:
    found = objects("RayCluster")
    assert len(found) == 1, f"one RayCluster expected in cluster/, found {[str(p) for p, _ in found]}"
    return found[0][1]


def rayjob(name: str) -> dict:
    path = CLUSTER / f"rayjob-{name}.yaml"
    (doc,) = docs(path)
    assert doc["kind"] == "RayJob", path
    return doc


# --- field names against the CRDs -------------------------------------------------------------------

def unknown_fields(doc: dict, fields: dict = FIELDS) -> list[str]:
    """The places in a RayCluster or RayJob whose field name the CRDs do not define there."""
    kind = doc.get("kind")
    if kind not in fields["kinds"]:
        return [f"kind {kind!r}: not a kind of the fixture ({', '.join(fields['kinds'])})"]
    errors = [f"{k}: not a top-level field" for k in doc if k not in ("apiVersion", "kind", "metadata", "spec")]
    errors += [f"metadata.{k}: not an ObjectMeta field used here" for k in doc.get("metadata", {})
               if k not in ("name", "namespace", "labels", "annotations")]

    def walk(node, table: dict, path: str, shown: str) -> None:
        if isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, table, f"{path}[]", f"{shown}[{i}]")
            return
        if not isinstance(node, dict):
            return
        allowed = table.get(path)
        if isinstance(allowed, str) and allowed.startswith("@"):
            walk(node, fields["defs"][allowed[1:]], "", shown)
            return
        if allowed == "*":
            return
        if allowed is None:
            errors.append(f"{shown}: the CRD has no object here")
            return
        for key, value in node.items():
            if key not in allowed:
                errors.append(f"{shown}.{key}: not a field here (KubeRay {fields['kuberay']} allows "
                              f"{', '.join(allowed)})")
            else:
                walk(value, table, f"{path}.{key}" if path else key, f"{shown}.{key}")

    walk(doc.get("spec", {}), fields["kinds"][kind], "spec", "spec")
    return errors


def test_every_manifest_parses_and_names_the_kuberay_version():
    assert KUBE_FILES, "no manifests in cluster/"
    for path in KUBE_FILES + [CLUSTER / "aws.yaml"]:
        assert docs(path), f"{path.name}: empty"
    for path in KUBE_FILES:
        kinds = {d["kind"] for d in docs(path)}
        if kinds & {"RayCluster", "RayJob"}:
            assert f"KubeRay {KUBERAY}" in path.read_text(), f"{path.name} does not name the KubeRay version"
    assert FIELDS["kuberay"] == KUBERAY


@pytest.mark.parametrize("path", KUBE_FILES, ids=lambda p: p.name)
def test_fields_are_those_of_the_kuberay_crds(path):
    for doc in docs(path):
        if doc["kind"] in ("RayCluster", "RayJob"):
            assert doc["apiVersion"] == "ray.io/v1"
            assert unknown_fields(doc) == [], path.name
        else:
            assert (doc["apiVersion"], doc["kind"]) == ("v1", "ServiceAccount"), path.name
            assert set(doc) <= {"apiVersion", "kind", "metadata"} and set(doc["metadata"]) <= {"name", "annotations"}


def test_a_misspelt_field_is_caught_at_every_level():
    cluster = the_raycluster()
    cases = []
    c = copy.deepcopy(cluster)
    c["spec"]["enableInTreeAutoScaling"] = c["spec"].pop("enableInTreeAutoscaling")      # spec
    cases.append((c, "spec.enableInTreeAutoScaling"))
    c = copy.deepcopy(cluster)
    c["spec"]["autoscalerOptions"]["idleTimeout"] = 60                                     # nested object
    cases.append((c, "spec.autoscalerOptions.idleTimeout"))
    c = copy.deepcopy(cluster)
    gpu = c["spec"]["workerGroupSpecs"][1]["template"]["spec"]
    gpu["toleration"] = gpu.pop("tolerations")                                             # pod spec
    cases.append((c, "spec.workerGroupSpecs[1].template.spec.toleration"))
    c = copy.deepcopy(cluster)
    c["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMount"] = []    # container
    cases.append((c, "spec.headGroupSpec.template.spec.containers[0].volumeMount"))
    c = copy.deepcopy(cluster)
    c["spec"]["headGroupSpec"]["template"]["spec"]["volumes"][0]["emptyDir"]["mediumType"] = "Memory"
    cases.append((c, "spec.headGroupSpec.template.spec.volumes[0].emptyDir.mediumType"))
    c = copy.deepcopy(cluster)
    c["spec"]["authOptions"]["tokenMode"] = True
    cases.append((c, "spec.authOptions.tokenMode"))
    job = copy.deepcopy(rayjob("pipeline"))
    job["spec"]["clusterSelectors"] = job["spec"].pop("clusterSelector")                  # RayJob spec
    cases.append((job, "spec.clusterSelectors"))
    job = copy.deepcopy(rayjob("pipeline"))
    job["spec"]["rayClusterSpec"] = copy.deepcopy(cluster["spec"])                          # RayJob -> cluster spec
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    cases.append((job, "spec.rayClusterSpec.workerGroupSpecs[0].maxReplica"))
    for doc, where in cases:
        errors = unknown_fields(doc)
        assert len(errors) == 1 and errors[0].startswith(where + ":"), (where, errors)


def readme_block(heading: str, opener: str) -> str:
    """The body of the first code block of cluster/README.md's section `heading` whose first line starts
    with `opener` (for a heredoc, the text between `<<'EOF'` and `EOF`)."""
    text = (CLUSTER / "README.md").read_text()
    section = text[text.index(heading):]
    block = section[section.index("```bash\n" + opener) + len("```bash\n"):]
    block = block[:block.index("```")]
    if "<<'EOF'" in block.splitlines()[0]:
        block = block[block.index("\n") + 1:block.index("\nEOF")]
    return block


def test_the_readme_recipe_for_a_self_contained_rayjob_gives_a_valid_one(monkeypatch, capsys):
    """cluster/README.md: a RayJob may carry the cluster itself (rayClusterSpec) instead of clusterSelector."""
    code = readme_block("**Why one RayCluster and small RayJobs.**", ".venv/bin/python - <<'EOF'")
    monkeypatch.chdir(ROOT)
    exec(compile(code, "cluster/README.md", "exec"), {})
    job = yaml.safe_load(capsys.readouterr().out)
    assert "clusterSelector" not in job["spec"] and job["spec"]["shutdownAfterJobFinishes"] is True
    assert job["spec"]["rayClusterSpec"] == the_raycluster()["spec"]
    assert unknown_fields(job) == []


# --- what the cluster has to have ---------------------------------------------------------------------

def pod_templates(spec: dict) -> dict[str, dict]:
    out = {"head": spec["headGroupSpec"]["template"]}
    out.update({g["groupName"]: g["template"] for g in spec["workerGroupSpecs"]})
    return out


def test_raycluster_token_auth_autoscaling_and_groups():
    spec = the_raycluster()["spec"]
    assert spec["authOptions"] == {"mode": "token"}
    assert spec["rayVersion"] == RAY_VERSION and Version(spec["rayVersion"]) >= Version("2.52.0")  # token auth
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for g in groups.values():
        assert 0 <= g["minReplicas"] <= g["maxReplicas"] and g["maxReplicas"] > 1
        assert "replicas" not in g or g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    for name, template in pod_templates(spec).items():
        (container,) = template["spec"]["containers"]
        for kind in ("requests", "limits"):
            gpus = container["resources"][kind].get("nvidia.com/gpu")
            assert (gpus is not None) == (name == "gpu"), f"{name}: nvidia.com/gpu {kind}"
        assert container["image"].endswith("-gpu") == (name == "gpu"), f"{name}: image {container['image']}"
    gpu_spec = groups["gpu"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu_spec["tolerations"]
    text = (CLUSTER / "raycluster.yaml").read_text()
    assert re.search(r"^\s*#\s*nodeSelector:", text, re.M), "the GPU nodeSelector example is gone"


def uncommented(text: str, key: str) -> str:
    """The text with the commented example block that starts at `# <key>:` uncommented (the block: the
    following comment lines indented deeper than its key)."""
    lines, out, indent = text.splitlines(), [], None
    for line in lines:
        m = re.match(r"^(\s*)# ?(.*)$", line)
        if m and m.group(2).startswith(f"{key}:"):
            indent = len(m.group(1))
            out.append(m.group(1) + m.group(2))
            continue
        if indent is not None and m and len(m.group(1)) == indent and m.group(2).startswith(" "):
            out.append(m.group(1) + m.group(2))
            continue
        indent = None
        out.append(line)
    result = "\n".join(out)
    assert result != text, f"no commented {key}: block"
    return result


def test_the_commented_examples_are_valid_when_uncommented():
    """The GPU nodeSelector and the IRSA annotation are commented examples: uncommented, they are fields
    the CRDs accept, at the right place."""
    text = uncommented(uncommented((CLUSTER / "raycluster.yaml").read_text(), "nodeSelector"), "annotations")
    found = {d["kind"]: d for d in yaml.safe_load_all(text) if d}
    assert unknown_fields(found["RayCluster"]) == []
    gpu = next(g for g in found["RayCluster"]["spec"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    assert gpu["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"]
    role = found["ServiceAccount"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert role.startswith("arn:aws:iam::") and ":role/" in role


@pytest.mark.parametrize("group", ["head", "cpu", "gpu"])
def test_dev_shm_is_a_memory_volume_in_every_pod(group):
    template = pod_templates(the_raycluster()["spec"])[group]
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    (container,) = template["spec"]["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert volumes[mount["name"]]["emptyDir"]["medium"] == "Memory"


@pytest.mark.parametrize("group", ["head", "cpu", "gpu"])
def test_s3_credentials_from_a_secret_or_the_service_account(group):
    template = pod_templates(the_raycluster()["spec"])[group]
    (container,) = template["spec"]["containers"]
    refs = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
    assert refs == ["cion-s3"] and template["spec"]["serviceAccountName"] == "cion-ray"
    accounts = [d for _, d in objects("ServiceAccount")]
    assert [a["metadata"]["name"] for a in accounts] == ["cion-ray"]


# --- no inline secret ----------------------------------------------------------------------------------

SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|(^|_)KEY($|_)", re.I)
SECRET_VALUE = [re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),                         # AWS access key id
                re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"),  # AWS secret key shape
                re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
                re.compile(r"\b[0-9a-f]{64}\b")]                                   # a Ray token's shape


def inline_secrets(node, path: str = "") -> list[str]:
    """Env entries that set a secret-looking variable by value (secrets come from secretKeyRef / envFrom),
    `--env NAME=value` / `NAME=value` assignments of such variables in commands, and strings that look like
    keys or tokens."""
    found = []
    if isinstance(node, dict):
        if "name" in node and "value" in node and SECRET_NAME.search(str(node["name"])):
            found.append(f"{path}: {node['name']} set inline (use valueFrom.secretKeyRef or envFrom)")
        for k, v in node.items():
            found += inline_secrets(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += inline_secrets(v, f"{path}[{i}]")
    elif isinstance(node, str):
        for m in re.finditer(r"\b([A-Z][A-Z0-9_]*)=(\S*)", node):
            if SECRET_NAME.search(m.group(1)) and m.group(2) and not m.group(2).startswith(('"$(', "$(", "file://")):
                found.append(f"{path}: {m.group(1)} assigned a literal")
        found += [f"{path}: looks like a secret" for p in SECRET_VALUE if p.search(node)]
    return found


@pytest.mark.parametrize("path", KUBE_FILES + [CLUSTER / "aws.yaml"], ids=lambda p: p.name)
def test_no_inline_secret(path):
    for doc in docs(path):
        assert inline_secrets(doc) == [], path.name


def test_the_secret_check_catches_inline_values():
    cluster = copy.deepcopy(the_raycluster())
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "not-a-real-one"})
    assert len(inline_secrets(cluster)) == 1
    head["env"][-1] = {"name": "S3_CONFIG", "value": "a1B2/c3D4+" * 4}  # the shape of an AWS secret key
    assert len(inline_secrets(cluster)) == 1
    head["env"][-1] = {"name": "RAY_AUTH_TOKEN",
                       "valueFrom": {"secretKeyRef": {"name": "cion-ray", "key": "auth_token"}}}
    assert inline_secrets(cluster) == []
    aws = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    aws["docker"]["run_options"].append("--env RAY_AUTH_TOKEN=0123abcd")
    assert len(inline_secrets(aws)) == 1


# --- the jobs -----------------------------------------------------------------------------------------

def entry_args(job: dict, script: str) -> list[str]:
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["python", f"/app/jobs/{script}.py"], argv[:2]
    assert (ROOT / "jobs" / f"{script}.py").is_file()
    return [a.replace("/app/", f"{ROOT}/", 1) if a.startswith("/app/") else a for a in argv[2:]]


@pytest.mark.parametrize("name", ("pipeline",) + STAGES)
def test_every_rayjob_submits_to_the_raycluster(name):
    job, cluster = rayjob(name), the_raycluster()
    spec = job["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    # KubeRay refuses these with clusterSelector (validation.go: ValidateRayJobSpec)
    assert "rayClusterSpec" not in spec and not spec.get("backoffLimit") and not spec.get("suspend")
    assert len(job["metadata"]["name"]) <= 47 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])
    assert all(isinstance(v, str) for v in spec["metadata"].values()), "job metadata values are strings"


@pytest.mark.parametrize("stage", STAGES)
def test_stage_entrypoints_are_accepted_by_the_stage_parser_and_config(stage):
    from cion_ray import cli

    job = rayjob(stage)
    parser = argparse.ArgumentParser(exit_on_error=False)
    getattr(cli, f"add_{stage}_args")(parser)
    args = parser.parse_args(entry_args(job, stage))
    cfg = getattr(cli, f"{stage}_config_from_args")(args)  # unknown --set keys and bad values fail here
    assert cfg.out.startswith("s3://") and cfg.out == job["spec"]["metadata"]["cion_ray.out"]
    assert job["spec"]["metadata"]["cion_ray.stage"] == stage
    if stage == "pretrain":  # Ray Train's storage is under the run folder: S3, reachable from every node
        assert cfg.scale.allow_pending is True
    if stage == "evaluate":  # features on a GPU: the driver must run on a GPU worker, not the head
        assert cfg.features.device == "cuda" and job["spec"]["entrypointNumGpus"] == 1


def test_pipeline_entrypoint_is_the_pipeline_command_on_s3():
    from cion_ray.pipeline.command import add_args
    from cion_ray.pipeline.config import load_pipeline

    job = rayjob("pipeline")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:4] == ["python", "/app/jobs/pipeline.py", "--config", "/app/configs/pipeline-gpu.yaml"]
    assert "--set out=s3://my-bucket/cion --set videos=s3://my-bucket/videos" in job["spec"]["entrypoint"]
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_args(parser)
    args = parser.parse_args(entry_args(job, "pipeline"))
    cfg = load_pipeline(args.config, args.set)  # every key checked, as before any Ray work
    assert list(cfg.stages) == list(STAGES)
    assert cfg.out == "s3://my-bucket/cion" and cfg.videos == "s3://my-bucket/videos"
    assert cfg.pretrain.scale.allow_pending is True
    md = job["spec"]["metadata"]
    assert md["cion_ray.pipeline"] == cfg.name and md["cion_ray.stages"] == ",".join(cfg.stages)
    assert md["cion_ray.out"] == cfg.out and md["cion_ray.status"] == cfg.out + "/status.json"


# --- aws.yaml -----------------------------------------------------------------------------------------

def ray_launcher_schema() -> dict:
    spec = importlib.util.find_spec("ray")  # the schema file only: Ray itself is not imported
    (pkg,) = spec.submodule_search_locations
    return json.loads((Path(pkg) / "autoscaler" / "ray-schema.json").read_text())


def test_aws_launcher_config_is_what_ray_up_validates():
    import jsonschema

    cfg = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    jsonschema.validate(cfg, ray_launcher_schema())
    bad = copy.deepcopy(cfg)
    bad["head_node_typ"] = bad.pop("head_node_type")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, ray_launcher_schema())

    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    assert cfg["auth"]["ssh_user"] and cfg["cluster_name"]
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types and {"cpu", "gpu"} <= set(types)
    assert types[cfg["head_node_type"]]["resources"] == {"CPU": 0}
    for name, t in types.items():
        assert t["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name
        if name != cfg["head_node_type"]:
            assert 0 <= t["min_workers"] <= t["max_workers"] <= cfg["max_workers"]
    assert RAY_VERSION in (ROOT / "cluster" / "Dockerfile").read_text()
    assert cfg["docker"]["image"].endswith("cion-ray:0.1.0")
    assert types["gpu"]["docker"]["worker_image"].endswith("cion-ray:0.1.0-gpu")
    assert re.match(r"^g\d|^p\d", types["gpu"]["node_config"]["InstanceType"])
    # token auth on every node: the mode in the container's environment, the token read at start
    assert "--env RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in cfg[key] if "ray start" in c]
        assert len(start) == 1 and 'export RAY_AUTH_TOKEN="$(' in start[0] and "get_parameter" in start[0], key


# --- Dockerfile and constraints -----------------------------------------------------------------------

def dockerfile_build(flavor: str) -> tuple[list[str], dict[str, str]]:
    """The instructions a `docker build --build-arg FLAVOR=<flavor>` runs for the final image, in order
    (stages followed through `FROM <stage>`), and the ENV values it sets. Enough of Dockerfile semantics
    for this file: global ARG defaults, ${VAR} in FROM, ENV, line continuations."""
    text = re.sub(r"\\\n", " ", (CLUSTER / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    args, stages, current = {}, {}, None
    for ln in lines:
        op, _, rest = ln.partition(" ")
        if op == "ARG" and current is None:
            k, _, v = rest.partition("=")
            args[k] = v
        elif op == "FROM":
            ref = re.sub(r"\$\{(\w+)\}", lambda m: {**args, "FLAVOR": flavor}[m.group(1)], rest)
            image, _, name = ref.partition(" AS ")
            current = name.strip() or "final"
            stages[current] = {"from": image.strip(), "lines": []}
        else:
            stages[current]["lines"].append(ln)
    chain, stage = [], "final"
    while stage in stages:
        chain.insert(0, stage)
        stage = stages[stage]["from"]
    base_image = stage
    run, env = [], {}
    for s in chain:
        for ln in stages[s]["lines"]:
            op, _, rest = ln.partition(" ")
            if op == "ENV":
                for m in re.finditer(r'(\w+)=("[^"]*"|\S+)', rest):
                    env[m.group(1)] = m.group(2).strip('"')
            run.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), ln))
    return [f"FROM {base_image}"] + run, env


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_dockerfile_installs_through_the_constraints(flavor):
    steps, env = dockerfile_build(flavor)
    assert steps[0] == f"FROM rayproject/ray:{RAY_VERSION}-py311-{flavor}"
    installs = [s for s in steps if s.startswith("RUN") and re.search(r"pip install\b.*-e ", s)]
    assert len(installs) == 1, installs
    extra = '".[gpu]"' if flavor == "gpu" else '"."'
    assert re.search(r"pip install -c cluster/constraints\.txt -e " + re.escape(extra) + r"(\s|$)", installs[0]), \
        installs[0]
    sources = [t for s in steps if s.startswith("COPY") for t in s.split()[1:-1] if not t.startswith("--")]
    assert {"cluster/constraints.txt", "pyproject.toml", "cion_ray", "jobs", "configs"} <= set(sources)
    constraints_copied = next(i for i, s in enumerate(steps) if s.startswith("COPY") and "cluster/constraints.txt" in s)
    assert constraints_copied < steps.index(installs[0])
    if flavor == "gpu":  # the GPU build of faiss is what imports
        assert "pip uninstall -y faiss-cpu" in installs[0] and "StandardGpuResources" in installs[0]
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (CLUSTER / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line.strip())
        assert m, f"constraints.txt: {line!r} is not NAME==VERSION"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"constraints.txt: {name} twice"
        pins[name] = m.group(2)
    return pins


def test_constraints_pin_every_direct_dependency_within_pyproject_bounds():
    pins = constraint_pins()
    direct = [Requirement(r) for r in PYPROJECT["dependencies"] + PYPROJECT["optional-dependencies"]["gpu"]]
    for req in direct:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not pinned in cluster/constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} outside {req}"
    assert "faiss-gpu-cu12" in {canonicalize_name(r.name) for r in direct[len(PYPROJECT["dependencies"]):]}


def test_constraints_are_the_tested_set():
    """The base dependencies' pins are the versions installed in the environment the tests run in."""
    pins = constraint_pins()
    for r in PYPROJECT["dependencies"]:
        name = canonicalize_name(Requirement(r).name)
        assert importlib.metadata.version(name) == pins[name], \
            f"{name}: installed {importlib.metadata.version(name)}, constraints.txt {pins[name]} (regenerate it)"


# --- the local token recipe, run as written ---------------------------------------------------------

@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_local_token_recipe_as_written(tiny_world, tmp_path):
    """Runs the bash block of cluster/README.md's "A cluster you start yourself" as written, with what a
    shared test machine needs on top: a private HOME (its own ~/.ray/auth_token), and the head's temp dir
    and ports of its own (appended to `ray start --head`, the dashboard port in the URLs). The job must
    succeed and be listed with its metadata; without the token, or without RAY_AUTH_MODE, the head refuses.
    Every process the recipe started is killed by its session id afterwards (never `ray stop`)."""
    import os
    import signal
    import subprocess

    import psutil

    from cluster import free_ports, worker_port_range

    block = readme_block("## A cluster you start yourself", "source .venv/bin/activate")
    gcs, dash, nm, om, agent, agent_grpc, rt_env, metrics, client = free_ports(9)
    wmin = worker_port_range(60)
    temp = tempfile.mkdtemp(prefix="rtok-", dir="/tmp")  # short: Ray's socket paths are limited
    private = (f" --node-ip-address 127.0.0.1 --temp-dir {temp} --port {gcs} --dashboard-host 127.0.0.1"
               f" --dashboard-port {dash} --node-manager-port {nm} --object-manager-port {om}"
               f" --dashboard-agent-listen-port {agent} --dashboard-agent-grpc-port {agent_grpc}"
               f" --runtime-env-agent-port {rt_env} --metrics-export-port {metrics} --ray-client-server-port {client}"
               f" --min-worker-port {wmin} --max-worker-port {wmin + 60} --object-store-memory 300000000"
               " --disable-usage-stats")
    assert block.count("ray start --head --num-cpus 8") == 1 and "127.0.0.1:8265" in block
    script = block.replace("ray start --head --num-cpus 8", "ray start --head --num-cpus 8" + private)
    script = script.replace("127.0.0.1:8265", f"127.0.0.1:{dash}")
    script = script.replace("runs/demo/world", str(tiny_world)).replace("runs/crops", str(tmp_path / "crops"))
    address = f"http://127.0.0.1:{dash}"
    empty_home = tmp_path / "empty-home"
    empty_home.mkdir()
    script = "set -e\n" + script + f"""
if env -u RAY_AUTH_TOKEN -u RAY_AUTH_MODE HOME={empty_home} ray job list --address {address}; then
    echo "ACCEPTED WITHOUT A TOKEN"; exit 3
fi
if env -u RAY_AUTH_MODE HOME={empty_home} ray job list --address {address}; then
    echo "ACCEPTED WITHOUT RAY_AUTH_MODE"; exit 4
fi
"""
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "PYTEST_")) and k != "VIRTUAL_ENV"}
    env.update(HOME=str(home), RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen(["bash", "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=480)
    finally:
        for p in psutil.process_iter(["pid"]):
            try:
                if os.getsid(p.pid) == proc.pid:
                    os.kill(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, OSError):
                pass
        shutil.rmtree(temp, ignore_errors=True)
    assert proc.returncode == 0, out[-6000:]
    assert (home / ".ray" / "auth_token").is_file()
    assert "succeeded" in out and "'cion_ray.stage': 'track'" in out, out[-6000:]
    assert out.count("Missing authentication token") >= 2, out[-6000:]
    assert (tmp_path / "crops" / "_manifest.json").is_file()
