//! Text templates: literal text with `{{ CEL }}` holes, for human-readable strings (Slack
//! text, mail subjects, URLs). Each hole is a [`CelExpr`] compiled in the template's scope.

use serde_json::Value;

use super::{Activation, CelExpr, Scope};

/// A text template: literal text with `{{ CEL }}` holes.
#[derive(Clone, Debug)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug)]
enum Part {
    Text(String),
    Expr(CelExpr),
}

impl Template {
    /// Parses and compiles every hole.
    pub fn compile(source: &str, scope: Scope) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| {
                format!(
                    "template has '{{{{' at offset {} without a closing '}}}}'",
                    source.len() - rest.len() + start
                )
            })?;
            let expr = after[..end].trim();
            if expr.is_empty() {
                return Err("template has an empty '{{ }}'".to_owned());
            }
            parts.push(Part::Expr(
                CelExpr::compile(expr, scope).map_err(|e| format!("in template: {e}"))?,
            ));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Self { parts })
    }

    /// Renders the template; strings are inserted as they are, other values as JSON.
    pub fn render(&self, vars: &Activation) -> Result<String, String> {
        self.render_with(vars, |s| s.to_owned())
    }

    /// Renders the template, passing each inserted value through `escape` (e.g. URL encoding).
    pub fn render_with(
        &self,
        vars: &Activation,
        escape: impl Fn(&str) -> String,
    ) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Expr(e) => match e.eval(vars)? {
                    Value::String(s) => out.push_str(&escape(&s)),
                    Value::Null => {}
                    other => out.push_str(&escape(&other.to_string())),
                },
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::event_vars;
    use super::*;

    #[test]
    fn templates_render_strings_raw_and_other_values_as_json() {
        let t = Template::compile(
            "From {{ data.from }}: {{ data.n }} {{labels}}",
            Scope::Event,
        )
        .unwrap();
        assert_eq!(
            t.render(&event_vars()).unwrap(),
            r#"From a@b.c: 3 ["billing"]"#
        );
    }

    #[test]
    fn templates_report_unclosed_holes_and_bad_expressions() {
        assert!(
            Template::compile("a {{ data.x", Scope::Event)
                .unwrap_err()
                .contains("without a closing")
        );
        assert!(
            Template::compile("a {{ nope }}", Scope::Event)
                .unwrap_err()
                .contains("unknown name")
        );
    }
}
