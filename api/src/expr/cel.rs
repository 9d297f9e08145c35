//! CEL, the language of every condition (`when`, classify rules, idempotency keys). An
//! expression is compiled once, checked against the names of its [`Scope`] and the known
//! functions, and evaluated against an [`Activation`] whose values were converted once.

use std::{collections::BTreeMap, fmt, sync::Arc};

use serde_json::Value;

use super::Scope;

/// The values an expression is evaluated against. Missing names evaluate as absent.
///
/// Values are converted to CEL once, when bound, so the many evaluations of one event (each
/// classify rule, each template hole) share the conversion.
#[derive(Clone, Debug, Default)]
pub struct Activation {
    vars: BTreeMap<&'static str, cel::Value>,
}

impl Activation {
    /// An empty activation.
    pub fn new() -> Self {
        Self::default()
    }

    /// Binds `name` to `value`.
    pub fn with(mut self, name: &'static str, value: Value) -> Self {
        self.set(name, value);
        self
    }

    /// Binds `name` to `value` in place.
    pub fn set(&mut self, name: &'static str, value: Value) {
        self.vars.insert(name, json_to_cel(&value));
    }
}

/// A compiled CEL expression.
#[derive(Clone)]
pub struct CelExpr {
    source: Arc<str>,
    program: Arc<cel::Program>,
}

impl fmt::Debug for CelExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CelExpr").field(&self.source).finish()
    }
}

thread_local! {
    // The standard functions and Kubernetes' CEL library (strings, lists, regex, urls, …, the
    // same functions as in CRD validation rules) are registered once per thread; each
    // evaluation adds its variables in an inner scope.
    static CEL_ROOT: cel::Context<'static> = {
        use kube_cel::KubeCelExt as _;
        cel::Context::default().with_all()
    };
}

/// Functions and macros available to expressions: CEL's standard library, its macros, and
/// Kubernetes' CEL extensions.
const CEL_FUNCTIONS: &[&str] = &[
    // macros and operators the parser reports as calls
    "has",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
    "@in",
    "in",
    // the cel crate's standard functions
    "contains",
    "size",
    "max",
    "min",
    "startsWith",
    "endsWith",
    "string",
    "bytes",
    "double",
    "int",
    "uint",
    "optional.none",
    "optional.of",
    "optional.ofNonZeroValue",
    "value",
    "hasValue",
    "or",
    "orValue",
    "matches",
    "duration",
    "timestamp",
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
    // Kubernetes' CEL library (kube-cel)
    "add",
    "asApproximateFloat",
    "asInteger",
    "base64.decode",
    "base64.encode",
    "charAt",
    "cidr",
    "compareTo",
    "containsCIDR",
    "containsIP",
    "distinct",
    "family",
    "find",
    "findAll",
    "first",
    "flatten",
    "format",
    "getEscapedPath",
    "getHost",
    "getHostname",
    "getPort",
    "getQuery",
    "getScheme",
    "indexOf",
    "ip",
    "isCIDR",
    "isGreaterThan",
    "isIP",
    "isInteger",
    "isLessThan",
    "isLoopback",
    "isQuantity",
    "isSemver",
    "isSorted",
    "isURL",
    "join",
    "last",
    "lastIndexOf",
    "lists.range",
    "lowerAscii",
    "major",
    "math.abs",
    "math.ceil",
    "math.floor",
    "math.greatest",
    "math.least",
    "math.round",
    "math.sqrt",
    "math.trunc",
    "minor",
    "patch",
    "quantity",
    "replace",
    "reverse",
    "semver",
    "sets.contains",
    "sets.equivalent",
    "sets.intersects",
    "sign",
    "slice",
    "sort",
    "split",
    "strings.quote",
    "sub",
    "substring",
    "sum",
    "trim",
    "upperAscii",
    "url",
];

impl CelExpr {
    /// Compiles `source` and checks that it only names the variables of `scope`.
    pub fn compile(source: &str, scope: Scope) -> Result<Self, String> {
        let program = cel::Program::compile(source).map_err(|e| {
            let text = e.to_string();
            format!(
                "invalid CEL expression {source:?}: {}",
                text.lines().next().unwrap_or("syntax error")
            )
        })?;
        let allowed = scope.variables();
        let mut free = Vec::new();
        free_names(program.expression(), &mut Vec::new(), &mut free);
        let refs = program.references();
        let mut unknown: Vec<&str> = free.into_iter().filter(|v| !allowed.contains(v)).collect();
        unknown.sort_unstable();
        unknown.dedup();
        if let Some(name) = unknown.first() {
            return Err(format!(
                "CEL expression {source:?} uses unknown name {name:?}; expected one of {}",
                allowed.join(", ")
            ));
        }
        let mut functions = refs.functions();
        functions.sort_unstable();
        // Operators (`_+_`, `_[_]`, `!_`, …) are reported as calls; they always exist.
        let is_operator = |f: &&str| f.starts_with(['_', '!', '-', '@']);
        if let Some(f) = functions
            .iter()
            .find(|f| !is_operator(f) && !CEL_FUNCTIONS.contains(f))
        {
            return Err(format!(
                "CEL expression {source:?} calls unknown function {f:?}; see the CEL and Kubernetes CEL libraries for what is available"
            ));
        }
        Ok(Self {
            source: source.into(),
            program: Arc::new(program),
        })
    }

    /// The expression as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates to a JSON value.
    pub fn eval(&self, vars: &Activation) -> Result<Value, String> {
        let value = self.eval_cel(vars)?;
        cel_to_json(&value).ok_or_else(|| {
            format!(
                "CEL expression {:?} produced a value that is not JSON ({value:?})",
                self.source
            )
        })
    }

    /// Evaluates a condition; a non-boolean result is an error.
    pub fn eval_bool(&self, vars: &Activation) -> Result<bool, String> {
        match self.eval_cel(vars)? {
            cel::Value::Bool(b) => Ok(b),
            other => Err(format!(
                "CEL condition {:?} must give true or false, gave {}",
                self.source,
                cel_to_json(&other).map_or_else(|| format!("{other:?}"), |v| v.to_string())
            )),
        }
    }

    fn eval_cel(&self, vars: &Activation) -> Result<cel::Value, String> {
        CEL_ROOT.with(|root| {
            let mut ctx = root.new_inner_scope();
            for (name, value) in &vars.vars {
                ctx.add_variable_from_value(*name, value.clone());
            }
            // The cel crate still has unfinished corners that panic (struct literals hit a
            // `todo!`); an expression a user wrote must fail, never take the process down.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.program.execute(&ctx)
            })) {
                Ok(result) => {
                    result.map_err(|e| format!("CEL expression {:?} failed: {e}", self.source))
                }
                Err(_) => Err(format!(
                    "CEL expression {:?} uses a construct the evaluator does not support",
                    self.source
                )),
            }
        })
    }
}

/// The free variables of an expression: identifiers not bound by an enclosing macro
/// (`exists(x, …)`, `all`, `map`, `filter`, `exists_one` bind their loop variable only inside
/// their own body).
fn free_names<'e>(e: &'e cel::IdedExpr, bound: &mut Vec<&'e str>, out: &mut Vec<&'e str>) {
    use cel::common::ast::{EntryExpr, Expr};
    let entries = |entries: &'e [cel::common::ast::IdedEntryExpr],
                   bound: &mut Vec<&'e str>,
                   out: &mut Vec<&'e str>| {
        for entry in entries {
            match &entry.expr {
                EntryExpr::StructField(f) => free_names(&f.value, bound, out),
                EntryExpr::MapEntry(m) => {
                    free_names(&m.key, bound, out);
                    free_names(&m.value, bound, out);
                }
            }
        }
    };
    match &e.expr {
        Expr::Ident(name) if !name.starts_with('@') && !bound.contains(&name.as_str()) => {
            out.push(name)
        }
        Expr::Call(c) => {
            if let Some(t) = &c.target {
                free_names(t, bound, out);
            }
            c.args.iter().for_each(|a| free_names(a, bound, out));
        }
        Expr::Comprehension(c) => {
            free_names(&c.iter_range, bound, out);
            free_names(&c.accu_init, bound, out);
            let depth = bound.len();
            bound.push(&c.iter_var);
            bound.extend(c.iter_var2.as_deref());
            bound.push(&c.accu_var);
            for part in [&c.loop_cond, &c.loop_step, &c.result] {
                free_names(part, bound, out);
            }
            bound.truncate(depth);
        }
        Expr::List(l) => l.elements.iter().for_each(|x| free_names(x, bound, out)),
        Expr::Map(m) => entries(&m.entries, bound, out),
        Expr::Struct(st) => entries(&st.entries, bound, out),
        Expr::Select(sel) => free_names(&sel.operand, bound, out),
        _ => {}
    }
}

/// JSON → CEL. Integers become `int` (not `uint`), so `data.count == 1` and `data.n > 5` mean
/// what they say; only integers beyond `i64` become `uint`.
fn json_to_cel(value: &Value) -> cel::Value {
    use cel::Value as C;
    match value {
        Value::Null => C::Null,
        Value::Bool(b) => C::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => C::Int(i),
            (None, Some(u)) => C::UInt(u),
            _ => C::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => C::String(Arc::new(s.clone())),
        Value::Array(items) => C::List(Arc::new(items.iter().map(json_to_cel).collect())),
        Value::Object(map) => C::Map(cel::objects::Map {
            map: Arc::new(
                map.iter()
                    .map(|(k, v)| {
                        (
                            cel::objects::Key::String(Arc::new(k.clone())),
                            json_to_cel(v),
                        )
                    })
                    .collect(),
            ),
        }),
    }
}

fn cel_to_json(value: &cel::Value) -> Option<Value> {
    use cel::Value as C;
    Some(match value {
        C::Null => Value::Null,
        C::Bool(b) => Value::Bool(*b),
        C::Int(i) => Value::from(*i),
        C::UInt(u) => Value::from(*u),
        C::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        C::String(s) => Value::String(s.to_string()),
        C::Bytes(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        C::List(items) => Value::Array(items.iter().map(cel_to_json).collect::<Option<_>>()?),
        C::Map(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map.map.iter() {
                let key = match k {
                    cel::objects::Key::String(s) => s.to_string(),
                    cel::objects::Key::Int(i) => i.to_string(),
                    cel::objects::Key::Uint(u) => u.to_string(),
                    cel::objects::Key::Bool(b) => b.to_string(),
                };
                out.insert(key, cel_to_json(v)?);
            }
            Value::Object(out)
        }
        C::Timestamp(t) => Value::String(t.to_rfc3339()),
        C::Duration(d) => Value::String(format!("{}s", d.num_milliseconds() as f64 / 1000.0)),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::test_support::event_vars;
    use super::*;

    #[test]
    fn cel_conditions_see_data_labels_and_event() {
        let vars = event_vars();
        let cases = [
            (r#"data.text.contains("refund")"#, true),
            (r#""billing" in labels"#, true),
            ("data.n > 5", false),
            (r#"labels.exists(l, l == "billing")"#, true),
            (r#"labels.exists( lbl , lbl.startsWith("bill"))"#, true),
            (r#"[1, 2].all(x, [3].exists(y, y > x))"#, true),
            (r#"event.id == "e1""#, true),
        ];
        for (src, want) in cases {
            let expr = CelExpr::compile(src, Scope::Event).unwrap();
            assert_eq!(expr.eval_bool(&vars).unwrap(), want, "{src}");
        }
    }

    #[test]
    fn cel_rejects_names_outside_the_scope() {
        let err = CelExpr::compile("dta.x == 1", Scope::Event).unwrap_err();
        assert!(err.contains(r#"unknown name "dta""#), "{err}");
        assert!(err.contains("data, event, labels"), "{err}");
        // A name bound in one macro is not in scope outside it.
        let err = CelExpr::compile("labels.exists(l, true) && l == 1", Scope::Event).unwrap_err();
        assert!(err.contains(r#"unknown name "l""#), "{err}");
        let err = CelExpr::compile("headers['x'] == 'y'", Scope::Event).unwrap_err();
        assert!(err.contains("headers"), "{err}");
        assert!(CelExpr::compile("headers['x-id']", Scope::Intake).is_ok());
    }

    #[test]
    fn cel_has_the_kubernetes_string_and_list_library() {
        let vars = event_vars();
        let expr = CelExpr::compile(
            r#"data.text.upperAscii() + "|" + labels.join(",")"#,
            Scope::Event,
        )
        .unwrap();
        assert_eq!(expr.eval(&vars).unwrap(), json!("PLEASE REFUND|billing"));
    }

    #[test]
    fn cel_rejects_unknown_functions_at_compile_time() {
        let err = CelExpr::compile(r#"data.text.contans("x")"#, Scope::Event).unwrap_err();
        assert!(err.contains(r#"unknown function "contans""#), "{err}");
    }

    #[test]
    fn a_cel_construct_that_panics_in_the_evaluator_is_an_error() {
        let expr = CelExpr::compile("Foo{a: 1}.a == 1", Scope::Event).unwrap();
        let err = expr.eval_bool(&event_vars()).unwrap_err();
        assert!(err.contains("does not support"), "{err}");
    }

    #[test]
    fn cel_reports_syntax_errors() {
        let err = CelExpr::compile("data.x ==", Scope::Event).unwrap_err();
        assert!(err.starts_with("invalid CEL expression"), "{err}");
    }

    #[test]
    fn cel_condition_must_be_boolean() {
        let expr = CelExpr::compile("data.n", Scope::Event).unwrap();
        let err = expr.eval_bool(&event_vars()).unwrap_err();
        assert!(err.contains("must give true or false, gave 3"), "{err}");
    }
}
