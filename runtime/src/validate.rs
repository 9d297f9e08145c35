//! `inputbot validate`: load files, run every offline check, and report each problem with the
//! file, the document, the resource and the field.

use std::{fmt::Write as _, path::PathBuf};

use inputbot_api::{
    manifest::{self, ResourceSet},
    validate::{self, Options, Severity},
};

/// The outcome of checking a set of files.
#[derive(Debug)]
pub struct Report {
    /// Human-readable lines, errors first.
    pub text: String,
    /// Errors found.
    pub errors: usize,
    /// Warnings found.
    pub warnings: usize,
}

/// Loads and validates `files` as they would be applied (missing references and Secrets are
/// warnings: they may already be in the cluster).
pub fn validate_files(files: &[PathBuf], namespace: &str) -> Report {
    let mut text = String::new();
    let set = match manifest::load_files(files, namespace) {
        Ok(set) => set,
        Err(errors) => {
            for e in &errors {
                let _ = writeln!(text, "error: {e}");
            }
            let n = errors.len();
            let _ = writeln!(text, "{n} error{}", plural(n));
            return Report {
                text,
                errors: n,
                warnings: 0,
            };
        }
    };
    let problems = validate::validate(&set, Options::FILES);
    let (mut errors, mut warnings) = (0, 0);
    for p in &problems {
        let label = match p.severity {
            Severity::Error => {
                errors += 1;
                "error"
            }
            Severity::Warning => {
                warnings += 1;
                "warning"
            }
        };
        let origin = set
            .origins
            .get(&p.resource)
            .map(|o| format!("{o}: "))
            .unwrap_or_default();
        let _ = writeln!(text, "{label}: {origin}{p}");
    }
    if errors == 0 {
        let _ = writeln!(text, "ok: {}", summary(&set));
    }
    let _ = writeln!(
        text,
        "{errors} error{}, {warnings} warning{}",
        plural(errors),
        plural(warnings)
    );
    Report {
        text,
        errors,
        warnings,
    }
}

fn summary(set: &ResourceSet) -> String {
    let n = |count: usize, what: &str| format!("{count} {what}{}", plural(count));
    format!(
        "{}, {}, {}, {}",
        n(set.bots.len(), "InputBot"),
        n(set.pipelines.len(), "Pipeline"),
        n(set.bindings.len(), "ActionBinding"),
        n(set.secrets.len(), "Secret")
    )
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
