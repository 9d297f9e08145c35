//! jq (through jaq) for reshaping JSON. Its input is the event data; functions that reach
//! outside the event (`env`, `$ENV`, `input`) are not available, and `halt` ends the program
//! with an error instead of the process.
//!
//! Every evaluation runs under [`Limits`]: a step budget (each item `range` yields and each
//! output is a step), a deadline checked at every step, and a nesting limit of
//! [`MAX_JSON_DEPTH`] on what `fromjson`/`tonumber` parse and on what a program outputs. jaq's
//! own JSON parser recurses without a limit, so `fromjson` here measures a string's nesting
//! (without recursion) before handing it to the parser. Breaking a limit fails the evaluation
//! with [`EvalError::Budget`].

use std::{
    cell::Cell,
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

use jaq_core::{
    Compiler, Ctx, Cv, DataT, Error as JqValError, Exn, ValXs, Vars as JqVars,
    data::JustLut,
    load::{Arena, File, Loader},
    native::{self, v},
};
use jaq_json::Val;
use serde_json::Value;

use super::{EvalError, MAX_JSON_DEPTH};

type Data = JustLut<Val>;
type JqFilter = jaq_core::Filter<Data>;

/// jq functions that reach outside the event (the process environment holds credentials; there
/// is no further input): never offered to bot authors.
const JQ_DENIED: &[&str] = &["env", "input", "inputs"];

/// Natives replaced by budgeted versions below (name and arity).
const JQ_REPLACED: &[(&str, usize)] = &[("range", 3), ("fromjson", 0)];

/// The limits of one evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Steps: items `range` yields plus outputs.
    pub steps: u64,
    /// Wall-clock time.
    pub time: Duration,
}

impl Default for Limits {
    /// One million steps and one second.
    fn default() -> Self {
        Self {
            steps: 1_000_000,
            time: Duration::from_secs(1),
        }
    }
}

/// What the running evaluation may still spend (one evaluation per thread at a time).
struct Meter {
    steps_left: Cell<u64>,
    deadline: Cell<Option<Instant>>,
    /// The first of steps or time that ran out, if any.
    broken: Cell<Option<&'static str>>,
    /// Whether a parse or an output was refused for its nesting.
    too_deep: Cell<bool>,
}

thread_local! {
    static METER: Meter = const {
        Meter {
            steps_left: Cell::new(u64::MAX),
            deadline: Cell::new(None),
            broken: Cell::new(None),
            too_deep: Cell::new(false),
        }
    };
}

/// Spends one step; `false` once a limit is broken (and from then on).
fn step() -> bool {
    METER.with(|m| {
        if m.broken.get().is_some() {
            return false;
        }
        let left = m.steps_left.get();
        if left == 0 {
            m.broken.set(Some("steps"));
            return false;
        }
        m.steps_left.set(left - 1);
        // The clock is read every 1024 steps: cheap, and still well inside any deadline.
        if left % 1024 == 0
            && let Some(deadline) = m.deadline.get()
            && Instant::now() >= deadline
        {
            m.broken.set(Some("time"));
            return false;
        }
        true
    })
}

fn refused_nesting() {
    METER.with(|m| m.too_deep.set(true))
}

fn budget_exn<'a>() -> Exn<'a, Val> {
    Exn::from(JqValError::str("evaluation budget exhausted"))
}

/// `range($from; $to; $by)`, as jaq's, spending a step per item.
fn budgeted_range<'a>(mut cv: Cv<'a, Data>) -> ValXs<'a, <Data as DataT>::V<'a>> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let by = cv.0.pop_var();
    let to = cv.0.pop_var();
    let from = cv.0.pop_var();
    let cmp = by.partial_cmp(&Val::from(0isize)).unwrap_or(Equal);
    let mut next: Option<Result<Val, Exn<'_, Val>>> = Some(Ok(from));
    Box::new(std::iter::from_fn(move || {
        let x = match next.take()? {
            Ok(x) => x,
            Err(e) => return Some(Err(e)),
        };
        let more = match cmp {
            Greater => x < to,
            Less => x > to,
            Equal => x != to,
        };
        if !more {
            return None;
        }
        if !step() {
            return Some(Err(budget_exn()));
        }
        next = Some((x.clone() + by.clone()).map_err(Exn::from));
        Some(Ok(x))
    }))
}

/// `fromjson`, refusing strings nested deeper than [`MAX_JSON_DEPTH`] before jaq's recursive
/// parser sees them.
fn bounded_fromjson<'a>(cv: Cv<'a, Data>) -> ValXs<'a, <Data as DataT>::V<'a>> {
    let bytes = match cv.1.try_as_utf8_bytes_owned() {
        Ok(b) => b,
        Err(e) => return native::bome(Err(e)),
    };
    if nesting_exceeds(&bytes, MAX_JSON_DEPTH) {
        refused_nesting();
        return native::bome(Err(JqValError::str(format!(
            "cannot parse as JSON: nests deeper than {MAX_JSON_DEPTH}"
        ))));
    }
    let parsed = jaq_json::bytes_valrs(bytes, |s| {
        Box::new(
            jaq_json::read::parse_many(s)
                .map(|r| r.map_err(|e| JqValError::str(format!("cannot parse as JSON: {e}")))),
        )
    });
    Box::new(parsed.map(|r| r.map_err(Exn::from)))
}

/// Whether JSON text opens more than `max` arrays and objects at once (strings skipped).
/// Counts without recursion, so any input is safe to measure.
pub fn nesting_exceeds(text: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Whether a value nests arrays and objects deeper than `max` (without recursion).
fn value_exceeds(v: &Val, max: usize) -> bool {
    let mut todo = vec![(v, 1usize)];
    while let Some((v, depth)) = todo.pop() {
        let children: Box<dyn Iterator<Item = &Val>> = match v {
            Val::Arr(a) => Box::new(a.iter()),
            Val::Obj(o) => Box::new(o.values()),
            _ => continue,
        };
        if depth > max {
            return true;
        }
        todo.extend(children.map(|c| (c, depth + 1)));
    }
    false
}

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
        let replaced: [native::Fun<Data>; 2] = [
            native::run::<Data>(("range", v(3), budgeted_range as jaq_core::RunPtr<Data>)),
            native::run::<Data>(("fromjson", v(0), bounded_fromjson as jaq_core::RunPtr<Data>)),
        ];
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs())
            .filter(|(name, args, _)| {
                !JQ_DENIED.contains(name) && !JQ_REPLACED.contains(&(*name, args.len()))
            })
            .chain(replaced);
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

    /// Runs the program on `input` under the default [`Limits`] and returns every output.
    pub fn run(&self, input: &Value) -> Result<Vec<Value>, String> {
        self.run_limited(input, Limits::default())
            .map_err(String::from)
    }

    /// Runs the program and expects exactly one output (default [`Limits`]).
    pub fn run_one(&self, input: &Value) -> Result<Value, String> {
        self.run_one_limited(input, Limits::default())
            .map_err(String::from)
    }

    /// Runs the program and expects exactly one output.
    pub fn run_one_limited(&self, input: &Value, limits: Limits) -> Result<Value, EvalError> {
        let mut out = self.run_limited(input, limits)?;
        match out.len() {
            1 => Ok(out.remove(0)),
            n => Err(EvalError::Failed(format!(
                "jq program {:?} must produce exactly one value, produced {n}",
                self.source
            ))),
        }
    }

    /// Runs the program on `input` under `limits` and returns every output.
    pub fn run_limited(&self, input: &Value, limits: Limits) -> Result<Vec<Value>, EvalError> {
        METER.with(|m| {
            m.steps_left.set(limits.steps);
            m.deadline.set(Instant::now().checked_add(limits.time));
            m.broken.set(None);
            m.too_deep.set(false);
        });
        let result = self.evaluate(input);
        let (broken, too_deep) = METER.with(|m| {
            m.steps_left.set(u64::MAX);
            m.deadline.set(None);
            (m.broken.take(), m.too_deep.take())
        });
        match (broken, result) {
            // Once steps or time ran out, an output may be the program catching the budget's
            // error: never trust it.
            (Some(limit), _) => Err(EvalError::Budget(self.over_budget(limit, limits))),
            // A refused nesting only counts when it ended the program (it may catch it).
            (None, Err(EvalError::Failed(m))) if too_deep => Err(EvalError::Budget(m)),
            (None, result) => result,
        }
    }

    fn over_budget(&self, limit: &str, limits: Limits) -> String {
        match limit {
            "steps" => format!(
                "jq program {:?} used more than its {} steps",
                self.source, limits.steps
            ),
            _ => format!(
                "jq program {:?} ran longer than {:?}",
                self.source, limits.time
            ),
        }
    }

    fn evaluate(&self, input: &Value) -> Result<Vec<Value>, EvalError> {
        let failed = EvalError::Failed;
        let input: Val = serde_json::from_value(input.clone())
            .map_err(|e| failed(format!("jq input is not JSON: {e}")))?;
        let ctx = Ctx::<Data>::new(&self.filter.lut, JqVars::new([]));
        let mut out = Vec::new();
        for result in self.filter.id.run((ctx, input)) {
            // Never `unwrap_valr`: it exits the process on `halt`. Here `halt` and
            // `halt_error` end this program with an error, like any other failure.
            let val = result.map_err(|exn| match exn.get_err() {
                Ok(e) => failed(format!("jq program {:?} failed: {e}", self.source)),
                Err(halted) => failed(format!(
                    "jq program {:?} called halt (exit code {}); halt is not available in inputbot",
                    self.source,
                    halted.get_halt().unwrap_or(0)
                )),
            })?;
            if !step() {
                break;
            }
            if value_exceeds(&val, MAX_JSON_DEPTH) {
                refused_nesting();
                return Err(failed(format!(
                    "jq program {:?} produced a value nested deeper than {MAX_JSON_DEPTH}",
                    self.source
                )));
            }
            let text = val.to_string();
            out.push(serde_json::from_str(&text).map_err(|e| {
                failed(format!(
                    "jq program {:?} produced a value that is not JSON ({text}): {e}",
                    self.source
                ))
            })?);
        }
        Ok(out)
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

    #[test]
    fn fromjson_and_tonumber_refuse_strings_nested_deeper_than_the_limit_without_recursing() {
        let deep = "[".repeat(200_000);
        for program in [".n | fromjson", ".n | tonumber"] {
            let prog = JqProgram::compile(program).unwrap();
            let err = prog
                .run_limited(&json!({ "n": deep }), Limits::default())
                .unwrap_err();
            assert!(
                matches!(&err, EvalError::Budget(m) if m.contains("deeper than 128")),
                "{err:?}"
            );
        }
        let ok = JqProgram::compile(".n | fromjson").unwrap();
        let nested = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert!(ok.run_one(&json!({ "n": nested })).is_ok());
        assert_eq!(
            ok.run_one(&json!({"n": r#"{"a": "[[[[[[ not nesting"}"#}))
                .unwrap(),
            json!({"a": "[[[[[[ not nesting"})
        );
        assert_eq!(
            JqProgram::compile(".n | tonumber")
                .unwrap()
                .run_one(&json!({"n": "42"}))
                .unwrap(),
            json!(42)
        );
    }

    #[test]
    fn a_caught_depth_error_is_the_programs_to_handle() {
        let prog = JqProgram::compile(r#"[.n | try fromjson catch "deep"] | .[0]"#).unwrap();
        let out = prog.run_one(&json!({ "n": "[".repeat(1000) })).unwrap();
        assert_eq!(out, json!("deep"));
    }

    #[test]
    fn range_over_a_huge_number_stops_at_the_step_budget_even_when_caught() {
        let limits = Limits {
            steps: 10_000,
            time: Duration::from_secs(10),
        };
        for program in [
            "last(range(.n))",
            "[range(.n)] | length",
            "last(try range(.n) catch 0)",
        ] {
            let prog = JqProgram::compile(program).unwrap();
            let started = Instant::now();
            let err = prog.run_limited(&json!({"n": 1e15}), limits).unwrap_err();
            assert!(
                matches!(&err, EvalError::Budget(m) if m.contains("10000 steps")),
                "{err:?}"
            );
            assert!(started.elapsed() < Duration::from_secs(2));
        }
        let prog = JqProgram::compile("last(range(.n))").unwrap();
        assert_eq!(
            prog.run_one_limited(&json!({"n": 5}), limits).unwrap(),
            json!(4)
        );
    }

    #[test]
    fn range_stops_at_the_deadline() {
        let limits = Limits {
            steps: u64::MAX,
            time: Duration::from_millis(50),
        };
        let prog = JqProgram::compile("last(range(.n))").unwrap();
        let started = Instant::now();
        let err = prog.run_limited(&json!({"n": 1e15}), limits).unwrap_err();
        assert!(
            matches!(&err, EvalError::Budget(m) if m.contains("longer than")),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn endless_outputs_stop_at_the_step_budget() {
        let limits = Limits {
            steps: 1000,
            time: Duration::from_secs(10),
        };
        let prog = JqProgram::compile("repeat(1)").unwrap();
        assert!(matches!(
            prog.run_limited(&json!(null), limits),
            Err(EvalError::Budget(_))
        ));
    }

    #[test]
    fn an_output_nested_deeper_than_the_limit_is_refused() {
        let prog = JqProgram::compile("reduce range(.n) as $i (0; [.])").unwrap();
        let err = prog
            .run_limited(&json!({"n": 500}), Limits::default())
            .unwrap_err();
        assert!(
            matches!(&err, EvalError::Budget(m) if m.contains("deeper than 128")),
            "{err:?}"
        );
        assert!(prog.run_one(&json!({"n": 100})).is_ok());
    }

    #[test]
    fn nesting_is_measured_outside_strings_only() {
        assert!(!nesting_exceeds(br#"["[[[[", "\"[[["]"#, 1));
        assert!(nesting_exceeds(b"[[", 1));
        assert!(!nesting_exceeds(b"[][][]", 1));
    }
}
