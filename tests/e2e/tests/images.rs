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

use std::process::Command;

use inputbot_e2e::images::{
    IMAGES, OPERATOR, RUNTIME, command_in, files_below, image_user, layout, ldd,
    manifest_and_config, output_text, pristine_rootfs, profile_dir, run_in, skopeo, skopeo_config,
    strings, unpack,
};
use inputbot_e2e::{repo_root, yaml_documents};
use inputbot_operator::render::{RUNTIME_PORT, RUNTIME_UID};
use serde_json::Value;

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

/// Sends SIGTERM to `pid` (the runtime drains and exits 0 on it).
fn terminate(pid: u32) {
    let out = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .output()
        .expect("running kill");
    assert!(
        out.status.success(),
        "kill -TERM {pid}:\n{}",
        output_text(&out)
    );
}

#[tokio::test]
async fn the_runtime_image_serves_the_quickstart_bot_as_its_user_and_drains_on_sigterm() {
    use hmac::{Hmac, Mac};
    use std::io::Read as _;

    let dir = unpack(&RUNTIME);
    let rootfs = dir.path().join("rootfs");
    let (_, config) = manifest_and_config(&RUNTIME);
    std::fs::copy(
        repo_root().join("examples/quickstart.yaml"),
        rootfs.join("tmp/quickstart.yaml"),
    )
    .expect("copying the example into the unpacked /tmp");
    let port = inputbot_e2e::runtime::free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "/usr/local/bin/inputbot",
        "run",
        "-f",
        "/tmp/quickstart.yaml",
        "--listen",
        &listen,
        "--data-dir",
        "/tmp/data",
    ];
    let mut child = command_in(&rootfs, &image_user(&config), &args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting the runtime inside its image");
    // Killed if the test fails before the SIGTERM below.
    struct Guard(Option<std::process::Child>);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(c) = self.0.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let pid = child.id();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let mut guard = Guard(Some(child));

    let http = reqwest::Client::new();
    let base = format!("http://{listen}");
    let ready = inputbot_e2e::wait_for(
        "the runtime in its image to answer /readyz",
        std::time::Duration::from_secs(60),
        || {
            let http = http.clone();
            let url = format!("{base}/readyz");
            async move {
                match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => Some(()),
                    _ => None,
                }
            }
        },
    )
    .await;
    let () = ready;

    let body = r#"{"action":"opened","issue":{"number":42,"title":"App crash on login","user":{"login":"octocat"}}}"#;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"quickstart-secret").expect("an HMAC key");
    mac.update(body.as_bytes());
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let answer = http
        .post(format!("{base}/github"))
        .header("content-type", "application/json")
        .header("x-github-delivery", uuid::Uuid::new_v4().to_string())
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await
        .expect("posting the signed webhook");
    assert_eq!(
        answer.status(),
        reqwest::StatusCode::ACCEPTED,
        "the signed webhook: {}",
        answer.text().await.unwrap_or_default()
    );

    terminate(pid);
    let mut child = guard.0.take().expect("the child");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("joining the wait")
        .expect("waiting for the runtime");
    let mut out = String::new();
    let mut err = String::new();
    std::io::BufReader::new(stdout)
        .read_to_string(&mut out)
        .expect("reading stdout");
    std::io::BufReader::new(stderr)
        .read_to_string(&mut err)
        .expect("reading stderr");
    assert!(
        status.success(),
        "the runtime did not drain and exit 0 on SIGTERM ({status}):\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(
        out.contains(r#"issue #42 "App crash on login" by octocat"#),
        "the log action did not print the event:\nstdout:\n{out}\nstderr:\n{err}"
    );
}
