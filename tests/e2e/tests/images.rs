//! The container images of the operator and the runtime, built here without a container
//! engine (`scripts/images.sh`: umoci writes an OCI layout from the binaries beside these
//! tests) and checked the way a kubelet would run them:
//!
//! - the image config: a numeric non-root user (the rendered Deployments' `runAsUser`), the
//!   binary as `ENTRYPOINT` (the chart and the operator set only `args`), the environment;
//! - the root filesystem, unpacked by umoci: no shell, nothing but the binary, exactly the
//!   libraries `ldd` names, the loader, and the few `/etc` files;
//! - the binary runs from it as the image's user (`chroot --userspec`): `--version`, the
//!   operator renders an example, the runtime validates it and accepts the exact `args` the
//!   rendered Deployments give it;
//! - skopeo (containers/image, the library of Podman and CRI-O) reads each layout as the same
//!   image and converts it to a `docker-archive` (what `docker load` and `kind load` take);
//! - `images/Dockerfile` (for people with Docker) declares the same user, entrypoint, command
//!   and environment;
//! - the images stay small.
//!
//! Needs umoci and skopeo (`scripts/tools.sh images`) and the operator and runtime binaries
//! (`cargo build -p inputbot-operator -p inputbot-runtime --bins`); no cluster, no broker.
//! Running the binaries inside the root filesystem needs root (`chroot`), or else user
//! namespaces (`unshare --map-root-user --root`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use inputbot_e2e::{repo_root, setting, yaml_documents};
use inputbot_operator::render::{RUNTIME_PORT, RUNTIME_UID};
use serde_json::Value;

/// One image: its name in `scripts/images.sh`, its binary and its default arguments.
struct Image {
    name: &'static str,
    binary: &'static str,
    cmd: &'static [&'static str],
}

const OPERATOR: Image = Image {
    name: "operator",
    binary: "inputbot-operator",
    cmd: &["run"],
};
const RUNTIME: Image = Image {
    name: "runtime",
    binary: "inputbot",
    cmd: &["--help"],
};
const IMAGES: [&Image; 2] = [&OPERATOR, &RUNTIME];

/// Compressed size every image must stay under (debug binaries, debug info stripped: each is
/// about 25 MiB today).
const MAX_COMPRESSED_BYTES: u64 = 64 << 20;

/// Paths that must never be in an image.
const SHELLS: [&str; 6] = [
    "bin/sh",
    "bin/bash",
    "usr/bin/sh",
    "usr/bin/bash",
    "bin/dash",
    "bin/busybox",
];

// ------------------------------------------------------------------------- helpers ---

/// `target/<profile>` of the test binaries: where the operator and runtime binaries are.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test> → target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

fn layout(image: &Image) -> PathBuf {
    profile_dir()
        .parent()
        .expect("the target dir")
        .join("images")
        .join(image.name)
}

fn umoci() -> String {
    let umoci = setting("INPUTBOT_UMOCI").unwrap_or_else(|| "umoci".into());
    match Command::new(&umoci).arg("--version").output() {
        Ok(out) if out.status.success() => umoci,
        _ => panic!(
            "umoci ({umoci}) does not run: no tool to build and unpack the images with. \
             Run `scripts/tools.sh images` (Debian's umoci, via apt); see docs/testing.md."
        ),
    }
}

fn skopeo() -> String {
    let skopeo = setting("INPUTBOT_SKOPEO").unwrap_or_else(|| "skopeo".into());
    match Command::new(&skopeo).arg("--version").output() {
        Ok(out) if out.status.success() => skopeo,
        _ => panic!(
            "skopeo ({skopeo}) does not run: no independent reader of the images. Run \
             `scripts/tools.sh images` (Debian's skopeo, via apt); see docs/testing.md."
        ),
    }
}

/// `skopeo inspect --config <reference>`: the image config as containers/image reads it.
fn skopeo_config(reference: &str) -> Value {
    let out = Command::new(skopeo())
        .args(["inspect", "--config", reference])
        .output()
        .expect("running skopeo inspect");
    assert!(
        out.status.success(),
        "skopeo cannot read {reference}:\n{}",
        output_text(&out)
    );
    serde_json::from_slice(&out.stdout).expect("skopeo prints the config as JSON")
}

fn output_text(out: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Builds both images once per test run from the binaries beside the tests (the script
/// skips an image whose inputs did not change).
fn build_images() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let profile = profile_dir();
        for image in IMAGES {
            let bin = profile.join(image.binary);
            assert!(
                bin.exists(),
                "{} is missing: run `cargo build -p inputbot-operator -p inputbot-runtime --bins` \
                 first (scripts/test.sh does)",
                bin.display()
            );
        }
        let out = Command::new(repo_root().join("scripts/images.sh"))
            .env(
                "CARGO_TARGET_DIR",
                profile.parent().expect("the target dir"),
            )
            .env(
                "INPUTBOT_IMAGES_PROFILE",
                profile.file_name().expect("a profile directory"),
            )
            .env("INPUTBOT_UMOCI", umoci())
            .output()
            .expect("running scripts/images.sh");
        assert!(
            out.status.success(),
            "scripts/images.sh failed:\n{}",
            output_text(&out)
        );
    });
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("digest {digest} is not sha256"));
    layout.join("blobs/sha256").join(hex)
}

/// The manifest and the config of `image`'s `latest` tag.
fn manifest_and_config(image: &Image) -> (Value, Value) {
    build_images();
    let layout = layout(image);
    let index = read_json(&layout.join("index.json"));
    let entry = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "latest")
        .unwrap_or_else(|| panic!("{}: no `latest` tag in index.json: {index}", image.name));
    let manifest = read_json(&blob_path(
        &layout,
        entry["digest"].as_str().expect("a digest"),
    ));
    let config = read_json(&blob_path(
        &layout,
        manifest["config"]["digest"]
            .as_str()
            .expect("a config digest"),
    ));
    (manifest, config)
}

/// `image`'s root filesystem, unpacked by umoci into a directory removed on drop.
fn unpack(image: &Image) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("inputbot-image-{}-", image.name))
        .tempdir()
        .expect("a temporary directory");
    unpack_into(image, &dir.path().join("rootfs"));
    dir
}

/// Unpacks `image`'s root filesystem into `rootfs` (which must not exist).
fn unpack_into(image: &Image, rootfs: &Path) {
    build_images();
    let mut cmd = Command::new(umoci());
    cmd.args(["raw", "unpack"]);
    if !is_root() {
        cmd.arg("--rootless");
    }
    let out = cmd
        .arg("--image")
        .arg(format!("{}:latest", layout(image).display()))
        .arg(rootfs)
        .output()
        .expect("running umoci raw unpack");
    assert!(
        out.status.success(),
        "umoci could not unpack the {} image:\n{}",
        image.name,
        output_text(&out)
    );
}

/// `image`'s root filesystem unpacked once per test run, for the tests that only read it:
/// `<target>/images/.unpacked/<image>`, replaced by the next run.
fn pristine_rootfs(image: &Image) -> PathBuf {
    static OPERATOR_ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    static RUNTIME_ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    let cell = if image.name == OPERATOR.name {
        &OPERATOR_ROOTFS
    } else {
        &RUNTIME_ROOTFS
    };
    cell.get_or_init(|| {
        let rootfs = layout(image)
            .parent()
            .expect("the images dir")
            .join(".unpacked")
            .join(image.name);
        if rootfs.exists() {
            std::fs::remove_dir_all(&rootfs)
                .unwrap_or_else(|e| panic!("removing {}: {e}", rootfs.display()));
        }
        std::fs::create_dir_all(rootfs.parent().expect("a parent")).expect("creating .unpacked");
        unpack_into(image, &rootfs);
        rootfs
    })
    .clone()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `name` on this process's PATH (the child's PATH is the image's, where it is not).
fn host_tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not on PATH (Debian: coreutils / util-linux)"))
}

/// Runs `args` (an absolute path inside `rootfs` first) with `rootfs` as `/`: as root through
/// `chroot --userspec` as the image's user; otherwise in a user namespace.
fn run_in(rootfs: &Path, user: &str, args: &[&str]) -> Output {
    let mut cmd = if is_root() {
        let mut c = Command::new(host_tool("chroot"));
        c.arg(format!("--userspec={user}")).arg(rootfs);
        c
    } else {
        let mut c = Command::new(host_tool("unshare"));
        c.arg("--map-root-user")
            .arg(format!("--root={}", rootfs.display()));
        c
    };
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?} inside {}: {e}", rootfs.display()))
}

/// Every file and symlink below `root`, as paths relative to it.
fn files_below(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("reading the unpacked root filesystem") {
            let entry = entry.expect("a directory entry");
            let path = entry.path();
            let kind = entry.file_type().expect("a file type");
            if kind.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).expect("below the root");
                out.insert(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// The libraries and the loader the dynamic linker loads for `bin`, per `ldd`, without the
/// leading `/`.
fn ldd(bin: &Path) -> BTreeSet<String> {
    let out = Command::new("ldd").arg(bin).output().expect("running ldd");
    assert!(
        out.status.success(),
        "ldd {}:\n{}",
        bin.display(),
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                [_, "=>", path, ..] if path.starts_with('/') => Some(*path),
                [path, ..] if path.starts_with('/') => Some(*path),
                _ => None,
            }
        })
        .map(|p| p.trim_start_matches('/').to_owned())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

fn image_user(config: &Value) -> String {
    config["config"]["User"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

// --------------------------------------------------------------------------- tests ---

#[test]
fn both_images_run_as_the_numeric_nonroot_user_with_the_binary_as_entrypoint() {
    for image in IMAGES {
        let (_, config) = manifest_and_config(image);
        let user = image_user(&config);
        let (uid, gid) = user.split_once(':').unwrap_or((&user, ""));
        let uid: i64 = uid.parse().unwrap_or_else(|_| {
            panic!(
                "{}: User is {user:?}: not numeric, so the kubelet cannot verify runAsNonRoot",
                image.name
            )
        });
        assert_ne!(uid, 0, "{}: the image runs as root", image.name);
        assert_eq!(
            (uid, gid),
            (RUNTIME_UID, RUNTIME_UID.to_string().as_str()),
            "{}: User {user:?} differs from the rendered Deployments' runAsUser/runAsGroup",
            image.name
        );
        assert_eq!(
            strings(&config["config"]["Entrypoint"]),
            [format!("/usr/local/bin/{}", image.binary)],
            "{}: the chart and the operator's Deployments set only `args`: the ENTRYPOINT \
             must be the binary",
            image.name
        );
        assert_eq!(
            strings(&config["config"]["Cmd"]),
            image.cmd,
            "{}: default arguments",
            image.name
        );
        let env = strings(&config["config"]["Env"]);
        assert!(
            env.contains(&"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt".to_owned()),
            "{}: SSL_CERT_FILE must name the image's CA bundle; Env is {env:?}",
            image.name
        );
        assert_eq!(config["os"], "linux", "{}", image.name);
        assert_eq!(config["architecture"], "amd64", "{}", image.name);
        assert!(
            config["config"]["ExposedPorts"]
                .get(format!("{RUNTIME_PORT}/tcp"))
                .is_some(),
            "{}: port {RUNTIME_PORT} (HTTP, metrics, probes) is not exposed: {config}",
            image.name
        );
    }
}

#[test]
fn the_root_filesystems_hold_no_shell_only_the_binary_its_libraries_and_etc_files() {
    for image in IMAGES {
        let rootfs = pristine_rootfs(image);
        for shell in SHELLS {
            assert!(
                std::fs::symlink_metadata(rootfs.join(shell)).is_err(),
                "{}: /{shell} is in the image; it must have no shell",
                image.name
            );
        }
        let mut expected = ldd(&profile_dir().join(image.binary));
        assert!(
            expected.iter().any(|l| l.contains("ld-linux")),
            "ldd names no dynamic loader: {expected:?}"
        );
        expected.extend([
            format!("usr/local/bin/{}", image.binary),
            "etc/passwd".into(),
            "etc/group".into(),
            "etc/nsswitch.conf".into(),
            "etc/ssl/certs/ca-certificates.crt".into(),
        ]);
        let found = files_below(&rootfs);
        let extra: Vec<_> = found.difference(&expected).collect();
        let missing: Vec<_> = expected.difference(&found).collect();
        assert!(
            extra.is_empty() && missing.is_empty(),
            "{}: the root filesystem must hold exactly the binary, the libraries ldd names, \
             the loader and the /etc files; extra: {extra:?}, missing: {missing:?}",
            image.name
        );
        let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).expect("etc/passwd");
        assert!(
            passwd
                .lines()
                .any(|l| l.starts_with(&format!("nonroot:x:{RUNTIME_UID}:{RUNTIME_UID}:"))),
            "{}: /etc/passwd lacks the nonroot user {RUNTIME_UID}:\n{passwd}",
            image.name
        );
        let tmp = std::fs::metadata(rootfs.join("tmp")).expect("/tmp exists");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            tmp.permissions().mode() & 0o7777,
            0o1777,
            "{}: /tmp must be world-writable and sticky",
            image.name
        );
    }
}

#[test]
fn both_binaries_report_their_version_from_the_unpacked_root_filesystem_as_the_image_user() {
    for image in IMAGES {
        let (_, config) = manifest_and_config(image);
        let rootfs = pristine_rootfs(image);
        let entrypoint = strings(&config["config"]["Entrypoint"]);
        let out = run_in(
            &rootfs,
            &image_user(&config),
            &[&entrypoint[0], "--version"],
        );
        assert!(
            out.status.success(),
            "{}: `{} --version` does not run inside the image:\n{}",
            image.name,
            entrypoint[0],
            output_text(&out)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{} {}", image.binary, env!("CARGO_PKG_VERSION")),
            "{}",
            image.name
        );
    }
}

#[test]
fn inside_the_images_the_operator_renders_a_bot_and_the_runtime_takes_the_rendered_args() {
    let operator = unpack(&OPERATOR);
    let runtime = unpack(&RUNTIME);
    let (_, config) = manifest_and_config(&RUNTIME);
    let user = image_user(&config);
    let example = std::fs::read(repo_root().join("examples/quickstart.yaml")).expect("example");
    for dir in [&operator, &runtime] {
        // The image's /tmp is where a pod writes (an emptyDir there); this copy is ours.
        std::fs::write(dir.path().join("rootfs/tmp/quickstart.yaml"), &example)
            .expect("writing the example into the unpacked /tmp");
    }

    let out = run_in(
        &operator.path().join("rootfs"),
        &user,
        &[
            "/usr/local/bin/inputbot-operator",
            "render",
            "-f",
            "/tmp/quickstart.yaml",
        ],
    );
    assert!(
        out.status.success(),
        "the operator image cannot render examples/quickstart.yaml:\n{}",
        output_text(&out)
    );
    let docs = yaml_documents(&String::from_utf8_lossy(&out.stdout)).expect("render's YAML");
    let deployments: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Deployment").collect();
    assert!(!deployments.is_empty(), "render printed no Deployment");

    let out = run_in(
        &runtime.path().join("rootfs"),
        &user,
        &[
            "/usr/local/bin/inputbot",
            "validate",
            "-f",
            "/tmp/quickstart.yaml",
        ],
    );
    assert!(
        out.status.success(),
        "the runtime image cannot validate examples/quickstart.yaml:\n{}",
        output_text(&out)
    );

    for d in deployments {
        let name = d["metadata"]["name"].as_str().unwrap_or_default();
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert!(
            c.get("command").is_none(),
            "{name}: the container sets `command`, which would replace the image's ENTRYPOINT"
        );
        assert_eq!(
            c["securityContext"]["runAsUser"], RUNTIME_UID,
            "{name}: runAsUser differs from the image's user"
        );
        // `--help` after the Deployment's args: clap parses every one of them first, so an
        // argument the runtime does not know fails here.
        let mut args = vec!["/usr/local/bin/inputbot".to_owned()];
        args.extend(strings(&c["args"]));
        args.push("--help".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_in(&runtime.path().join("rootfs"), &user, &args);
        assert!(
            out.status.success(),
            "{name}: the runtime image rejects the rendered args {:?}:\n{}",
            &args[1..],
            output_text(&out)
        );
    }

    // The chart's operator Deployment likewise sets only `args`.
    let template = std::fs::read_to_string(
        repo_root().join("charts/inputbot-operator/templates/deployment.yaml"),
    )
    .expect("the chart's deployment template");
    assert!(
        !template.contains("command:"),
        "the chart's operator container sets `command`: the image's ENTRYPOINT would be replaced"
    );
    let line = template
        .lines()
        .find_map(|l| l.trim().strip_prefix("args:"))
        .expect("the chart's operator container has args");
    let chart_args: Vec<String> = serde_json::from_str(line.trim()).expect("args as a JSON list");
    let mut args = vec!["/usr/local/bin/inputbot-operator".to_owned()];
    args.extend(chart_args);
    args.push("--help".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_in(&operator.path().join("rootfs"), &user, &args);
    assert!(
        out.status.success(),
        "the operator image rejects the chart's args {:?}:\n{}",
        &args[1..],
        output_text(&out)
    );
}

#[test]
fn skopeo_reads_each_layout_as_the_same_image_and_writes_a_docker_archive() {
    for image in IMAGES {
        let (_, config) = manifest_and_config(image);
        let reference = format!("oci:{}:latest", layout(image).display());
        let read = skopeo_config(&reference);
        assert_eq!(
            read["config"], config["config"],
            "{}: skopeo reads another config from the layout",
            image.name
        );
        let dir = tempfile::tempdir().expect("a temporary directory");
        let archive = dir.path().join(format!("{}.tar", image.name));
        let target = format!(
            "docker-archive:{}:inputbot/{}:test",
            archive.display(),
            image.binary
        );
        let out = Command::new(skopeo())
            .args(["--insecure-policy", "copy", "--quiet", &reference, &target])
            .output()
            .expect("running skopeo copy");
        assert!(
            out.status.success(),
            "{}: skopeo cannot write a docker-archive:\n{}",
            image.name,
            output_text(&out)
        );
        let again = skopeo_config(&format!("docker-archive:{}", archive.display()));
        for key in ["User", "Entrypoint", "Cmd", "Env"] {
            assert_eq!(
                again["config"][key], config["config"][key],
                "{}: {key} of the docker-archive",
                image.name
            );
        }
    }
}

#[test]
fn the_images_stay_small() {
    for image in IMAGES {
        let (manifest, _) = manifest_and_config(image);
        let layers: u64 = manifest["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| l["size"].as_u64().expect("a layer size"))
            .sum();
        assert!(layers > 0, "{}: no layers", image.name);
        assert!(
            layers < MAX_COMPRESSED_BYTES,
            "{}: {layers} bytes of compressed layers, over the {MAX_COMPRESSED_BYTES} budget",
            image.name
        );
        println!(
            "{}: {:.1} MiB compressed",
            image.name,
            layers as f64 / 1048576.0
        );
    }
}

/// `images/Dockerfile`'s final stages: target name → (USER, ENTRYPOINT, CMD, ENV, EXPOSE).
fn dockerfile_stages() -> Vec<(String, Vec<(String, String)>)> {
    let text =
        std::fs::read_to_string(repo_root().join("images/Dockerfile")).expect("images/Dockerfile");
    let mut stages: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        if word == "FROM" {
            let parts: Vec<&str> = rest.split_whitespace().collect();
            let name = match parts.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("AS") => name.to_string(),
                _ => String::new(),
            };
            stages.push((name, vec![("FROM".into(), parts[0].to_owned())]));
        } else if let Some((_, directives)) = stages.last_mut() {
            directives.push((word.to_owned(), rest.trim().to_owned()));
        }
    }
    stages
}

#[test]
fn the_dockerfile_declares_what_the_daemonless_images_have() {
    let stages = dockerfile_stages();
    for image in IMAGES {
        let (_, config) = manifest_and_config(image);
        let (_, directives) = stages
            .iter()
            .find(|(name, _)| name == image.name)
            .unwrap_or_else(|| panic!("images/Dockerfile has no stage `AS {}`", image.name));
        let get = |word: &str| -> Vec<&str> {
            directives
                .iter()
                .filter(|(w, _)| w == word)
                .map(|(_, r)| r.as_str())
                .collect()
        };
        assert_eq!(get("FROM"), ["scratch"], "{}: FROM", image.name);
        assert!(
            get("COPY")
                .iter()
                .any(|c| c.contains(&format!("/rootfs/{}", image.name))),
            "{}: the stage must copy the root filesystem `scripts/images.sh rootfs` assembled",
            image.name
        );
        assert_eq!(get("USER"), [image_user(&config)], "{}: USER", image.name);
        let json_list = |word: &str| -> Vec<String> {
            let v = get(word);
            assert_eq!(v.len(), 1, "{}: one {word}", image.name);
            serde_json::from_str(v[0])
                .unwrap_or_else(|e| panic!("{}: {word} is not exec form: {e}", image.name))
        };
        assert_eq!(
            json_list("ENTRYPOINT"),
            strings(&config["config"]["Entrypoint"]),
            "{}: ENTRYPOINT",
            image.name
        );
        assert_eq!(
            json_list("CMD"),
            strings(&config["config"]["Cmd"]),
            "{}: CMD",
            image.name
        );
        let mut env: Vec<String> = get("ENV")
            .iter()
            .flat_map(|e| e.split_whitespace())
            .map(str::to_owned)
            .collect();
        env.sort();
        let mut want = strings(&config["config"]["Env"]);
        want.sort();
        assert_eq!(env, want, "{}: ENV", image.name);
        assert_eq!(
            get("EXPOSE"),
            [RUNTIME_PORT.to_string()],
            "{}: EXPOSE",
            image.name
        );
    }
}
