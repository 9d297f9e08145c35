//! The defaults and small shared parsers that both [`validate`](crate::validate) and
//! [`resolve`](crate::resolve) rely on. A leaf: it imports only the resource types, so
//! `resolve` depends on `validate` and this module, and `validate` never on `resolve`.

use kube::ResourceExt;

use crate::pipeline::Step;

/// Partitions of a topic when the resource does not say.
pub const DEFAULT_PARTITIONS: i32 = 6;
/// Events processed concurrently by a process or act replica when the resource does not say.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 64;
/// The namespace of a resource that does not name one.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The namespace of a resource, or [`DEFAULT_NAMESPACE`].
pub fn namespace_of<K: kube::Resource>(r: &K) -> String {
    r.namespace()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
}

/// A step's name: its own, or `<kind>-<position>` (1-based).
pub fn step_name(step: &Step, index: usize) -> String {
    match (&step.name, step.kind()) {
        (Some(name), _) => name.clone(),
        (None, Some(kind)) => format!("{}-{}", kind.as_str(), index + 1),
        (None, None) => format!("step-{}", index + 1),
    }
}

/// Parses a five-field cron expression (`minute hour day-of-month month day-of-week`).
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    let fields = expr.split_whitespace().count();
    if fields != 5 {
        return Err(format!(
            "expected five cron fields (minute hour day-of-month month day-of-week), found {fields} in {expr:?}"
        ));
    }
    croner::parser::CronParser::new()
        .parse(expr)
        .map_err(|e| format!("invalid cron expression {expr:?}: {e}"))
}
