//! The container images built by `scripts/images.sh` (OCI layouts under `<target>/images/`,
//! written by umoci from the binaries beside the tests), and how the tests read them: the
//! index, manifest and config; the root filesystem unpacked by umoci; commands run inside it
//! as the image's user (`chroot --userspec` as root, else a user namespace).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

use crate::{repo_root, setting};

/// One image: its name in `scripts/images.sh`, its binary and its default arguments.
pub struct Image {
    /// Its name in `scripts/images.sh` and under `<target>/images/`.
    pub name: &'static str,
    /// The binary, at `/usr/local/bin/<binary>` in the image.
    pub binary: &'static str,
    /// The image's default arguments (`CMD`).
    pub cmd: &'static [&'static str],
}

/// The operator's image.
pub const OPERATOR: Image = Image {
    name: "operator",
    binary: "inputbot-operator",
    cmd: &["run"],
};
/// The runtime's image.
pub const RUNTIME: Image = Image {
    name: "runtime",
    binary: "inputbot",
    cmd: &["--help"],
};
/// Both images.
pub const IMAGES: [&Image; 2] = [&OPERATOR, &RUNTIME];

/// `target/<profile>` of the test binaries: where the operator and runtime binaries are.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test> → target/<profile>
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

pub fn layout(image: &Image) -> PathBuf {
    profile_dir()
        .parent()
        .expect("the target dir")
        .join("images")
        .join(image.name)
}

pub fn umoci() -> String {
    let umoci = setting("INPUTBOT_UMOCI").unwrap_or_else(|| "umoci".into());
    match Command::new(&umoci).arg("--version").output() {
        Ok(out) if out.status.success() => umoci,
        _ => panic!(
            "umoci ({umoci}) does not run: no tool to build and unpack the images with. \
             Run `scripts/tools.sh images` (Debian's umoci, via apt); see docs/testing.md."
        ),
    }
}

pub fn skopeo() -> String {
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
pub fn skopeo_config(reference: &str) -> Value {
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

pub fn output_text(out: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Builds both images once per test run from the binaries beside the tests (the script
/// skips an image whose inputs did not change).
pub fn build_images() {
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

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("digest {digest} is not sha256"));
    layout.join("blobs/sha256").join(hex)
}

/// The manifest and the config of `image`'s `latest` tag.
pub fn manifest_and_config(image: &Image) -> (Value, Value) {
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
pub fn unpack(image: &Image) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("inputbot-image-{}-", image.name))
        .tempdir()
        .expect("a temporary directory");
    unpack_into(image, &dir.path().join("rootfs"));
    dir
}

/// Unpacks `image`'s root filesystem into `rootfs` (which must not exist).
pub fn unpack_into(image: &Image, rootfs: &Path) {
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
pub fn pristine_rootfs(image: &Image) -> PathBuf {
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

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `name` on this process's PATH (the child's PATH is the image's, where it is not).
pub fn host_tool(name: &str) -> PathBuf {
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
pub fn run_in(rootfs: &Path, user: &str, args: &[&str]) -> Output {
    command_in(rootfs, user, args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?} inside {}: {e}", rootfs.display()))
}

/// The command that runs `args` inside `rootfs` as `user` (see [`run_in`]), with the image's
/// `PATH` and nothing else in its environment.
pub fn command_in(rootfs: &Path, user: &str, args: &[&str]) -> Command {
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
    cmd.args(args).env_clear().env("PATH", "/usr/local/bin");
    cmd
}

/// Every file and symlink below `root`, as paths relative to it.
pub fn files_below(root: &Path) -> BTreeSet<String> {
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
pub fn ldd(bin: &Path) -> BTreeSet<String> {
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

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

pub fn image_user(config: &Value) -> String {
    config["config"]["User"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}
