//! jq (through jaq) for reshaping JSON. Its input is the event data; functions that reach
//! outside the event (`env`, `$ENV`, `input`) are not available, and `halt` ends the program
//! with an error instead of the process.

use std::{fmt, sync::Arc};

use jaq_core::{
    Compiler, Ctx, Vars as JqVars,
    data::JustLut,
    load::{Arena, File, Loader},
};
use serde_json::Value;

type JqFilter = jaq_core::Filter<JustLut<jaq_json::Val>>;

/// jq functions that reach outside the event (the process environment holds credentials; there
/// is no further input): never offered to bot authors.
const JQ_DENIED: &[&str] = &["env", "input", "inputs"];

/// A compiled jq program.
#[derive(Clone)]
pub struct JqProgram {
    source: Arc<str>,
    filter: Arc<JqFilter>,
}

impl fmt::Debug for JqProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JqProgram").field(&self.source).finish()
    }
}

impl JqProgram {
    /// Compiles a jq program.
    pub fn compile(source: &str) -> Result<Self, String> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs())
            .filter(|(name, _, _)| !JQ_DENIED.contains(name));
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let position = |rest: &str| source.len().saturating_sub(rest.len());
        let modules = loader
            .load(
                &arena,
                File {
                    code: source,
                    path: (),
                },
            )
            .map_err(|errors| {
                let mut msgs = Vec::new();
                for (_, error) in errors {
                    match error {
                        jaq_core::load::Error::Io(items) => {
                            msgs.extend(items.into_iter().map(|(_, e)| e))
                        }
                        jaq_core::load::Error::Lex(items) => {
                            msgs.extend(items.into_iter().map(|(expect, rest)| {
                                format!("expected {} at offset {}", expect.as_str(), position(rest))
                            }))
                        }
                        jaq_core::load::Error::Parse(items) => {
                            msgs.extend(items.into_iter().map(|(expect, rest)| {
                                format!("expected {} at offset {}", expect.as_str(), position(rest))
                            }))
                        }
                    }
                }
                format!("invalid jq program {source:?}: {}", msgs.join("; "))
            })?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(|errors| {
                let msgs: Vec<String> = errors
                    .into_iter()
                    .flat_map(|(_, errs)| errs)
                    .map(|(name, undefined)| format!("undefined {} {name}", undefined.as_str()))
                    .collect();
                format!("invalid jq program {source:?}: {}", msgs.join("; "))
            })?;
        Ok(Self {
            source: source.into(),
            filter: Arc::new(filter),
        })
    }

    /// The program as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Runs the program on `input` and returns every output.
    pub fn run(&self, input: &Value) -> Result<Vec<Value>, String> {
        let input: jaq_json::Val = serde_json::from_value(input.clone())
            .map_err(|e| format!("jq input is not JSON: {e}"))?;
        let ctx = Ctx::<JustLut<jaq_json::Val>>::new(&self.filter.lut, JqVars::new([]));
        let mut out = Vec::new();
        for result in self.filter.id.run((ctx, input)) {
            // Never `unwrap_valr`: it exits the process on `halt`. Here `halt` and
            // `halt_error` end this program with an error, like any other failure.
            let val = result.map_err(|exn| match exn.get_err() {
                Ok(e) => format!("jq program {:?} failed: {e}", self.source),
                Err(halted) => format!(
                    "jq program {:?} called halt (exit code {}); halt is not available in inputbot",
                    self.source,
                    halted.get_halt().unwrap_or(0)
                ),
            })?;
            let text = val.to_string();
            out.push(serde_json::from_str(&text).map_err(|e| {
                format!(
                    "jq program {:?} produced a value that is not JSON ({text}): {e}",
                    self.source
                )
            })?);
        }
        Ok(out)
    }

    /// Runs the program and expects exactly one output.
    pub fn run_one(&self, input: &Value) -> Result<Value, String> {
        let mut out = self.run(input)?;
        match out.len() {
            1 => Ok(out.remove(0)),
            n => Err(format!(
                "jq program {:?} must produce exactly one value, produced {n}",
                self.source
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn jq_reshapes_event_data() {
        let prog = JqProgram::compile("{ticket: .n, text: .text | ascii_upcase}").unwrap();
        let out = prog.run_one(&json!({"n": 7, "text": "hi"})).unwrap();
        assert_eq!(out, json!({"ticket": 7, "text": "HI"}));
    }

    #[test]
    fn jq_reports_syntax_and_undefined_names() {
        let err = JqProgram::compile("{a: .b").unwrap_err();
        assert!(err.starts_with("invalid jq program"), "{err}");
        let err = JqProgram::compile("frobnicate(.a)").unwrap_err();
        assert!(err.contains("frobnicate"), "{err}");
    }

    #[test]
    fn jq_halt_fails_the_program_instead_of_exiting_the_process() {
        let prog =
            JqProgram::compile(r#"if .a == null then "missing" | halt_error else . end"#).unwrap();
        let err = prog.run(&json!({})).unwrap_err();
        assert!(err.contains("halt"), "{err}");
        assert!(JqProgram::compile("halt").unwrap().run(&json!(1)).is_err());
    }

    #[test]
    fn jq_cannot_read_the_environment() {
        assert!(JqProgram::compile("env").is_err());
        assert!(JqProgram::compile("$ENV").is_err());
        assert!(JqProgram::compile("input").is_err());
    }
}
