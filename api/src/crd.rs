//! The CustomResourceDefinitions, generated from the types, and the client-side form of the
//! checks the API server runs at apply time: the structural schema (read strictly, so an
//! unknown field is an error as with `kubectl apply --validate=strict`) and the CEL
//! `x-kubernetes-validations` rules (through kube-cel).

use std::sync::OnceLock;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
    JSONSchemaPropsOrStringArray,
};
use kube::CustomResourceExt;
use serde_json::Value;

use crate::{ActionBinding, InputBot, Pipeline};

/// The three CRDs, each description reflowed into paragraphs (see [`reflow`]).
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![InputBot::crd(), Pipeline::crd(), ActionBinding::crd()];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                reflow_descriptions(schema);
            }
        }
    }
    crds
}

/// Reflows the description of a schema and of every schema nested in it.
fn reflow_descriptions(schema: &mut JSONSchemaProps) {
    if let Some(d) = schema.description.as_mut() {
        *d = reflow(d);
    }
    let maps = [
        schema.properties.as_mut(),
        schema.pattern_properties.as_mut(),
        schema.definitions.as_mut(),
    ];
    for map in maps.into_iter().flatten() {
        map.values_mut().for_each(reflow_descriptions);
    }
    let lists = [
        schema.all_of.as_mut(),
        schema.any_of.as_mut(),
        schema.one_of.as_mut(),
    ];
    for list in lists.into_iter().flatten() {
        list.iter_mut().for_each(reflow_descriptions);
    }
    if let Some(not) = schema.not.as_mut() {
        reflow_descriptions(not);
    }
    match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(s)) => reflow_descriptions(s),
        Some(JSONSchemaPropsOrArray::Schemas(list)) => {
            list.iter_mut().for_each(reflow_descriptions)
        }
        None => {}
    }
    for child in [
        schema.additional_properties.as_mut(),
        schema.additional_items.as_mut(),
    ]
    .into_iter()
    .flatten()
    {
        if let JSONSchemaPropsOrBool::Schema(s) = child {
            reflow_descriptions(s);
        }
    }
    for dependency in schema.dependencies.iter_mut().flat_map(|d| d.values_mut()) {
        if let JSONSchemaPropsOrStringArray::Schema(s) = dependency {
            reflow_descriptions(s);
        }
    }
}

/// A doc comment as `kubectl explain` should show it: the lines of a paragraph joined with a
/// space (rustdoc keeps the line breaks of the source), paragraphs separated by a blank line,
/// and Markdown list items, indented code and fenced code each kept on lines of their own.
fn reflow(text: &str) -> String {
    let mut paragraphs: Vec<String> = Vec::new();
    // The paragraph being built, and whether it is code (kept line for line).
    let mut current: Option<(String, bool)> = None;
    let mut fenced = false;
    for line in text.lines() {
        if fenced {
            let (p, _) = current.get_or_insert_with(Default::default);
            p.push('\n');
            p.push_str(line);
            fenced = !is_fence(line);
            continue;
        }
        if line.trim().is_empty() {
            paragraphs.extend(current.take().map(|(p, _)| p));
            continue;
        }
        let code = is_indented_code(line);
        match current.as_mut() {
            None => {
                // Indented code only starts a paragraph; inside one an indented line is text.
                let kept = if code { line } else { line.trim_start() };
                current = Some((kept.trim_end().to_owned(), code));
            }
            Some((p, is_code)) => {
                if *is_code || is_fence(line) || is_list_item(line) {
                    p.push('\n');
                    p.push_str(line.trim_end());
                } else {
                    p.push(' ');
                    p.push_str(line.trim());
                }
            }
        }
        if is_fence(line) {
            fenced = true;
            if let Some((_, is_code)) = current.as_mut() {
                *is_code = true;
            }
        }
    }
    paragraphs.extend(current.map(|(p, _)| p));
    paragraphs.join("\n\n")
}

/// `- item`, `* item`, `+ item` or `1. item` (possibly indented, for nested lists).
fn is_list_item(line: &str) -> bool {
    let l = line.trim_start();
    if l.starts_with("- ") || l.starts_with("* ") || l.starts_with("+ ") {
        return true;
    }
    let digits = l.chars().take_while(char::is_ascii_digit).count();
    digits > 0 && (l[digits..].starts_with(". ") || l[digits..].starts_with(") "))
}

/// A line of an indented code block: four spaces or a tab.
fn is_indented_code(line: &str) -> bool {
    line.starts_with("    ") || line.starts_with('\t')
}

/// The opening or closing line of a fenced code block.
fn is_fence(line: &str) -> bool {
    let l = line.trim_start();
    l.starts_with("```") || l.starts_with("~~~")
}

/// The file a CRD is kept in under `crds/`: `<group>_<plural>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// A CRD as the YAML kept in `crds/` (with a header saying it is generated).
pub fn to_yaml(crd: &CustomResourceDefinition) -> String {
    let body = serde_yaml::to_string(crd).expect("a CRD always serializes to YAML");
    format!("# Generated by `inputbot-operator crds` from api/src; do not edit.\n{body}")
}

/// All CRDs as one multi-document YAML stream.
pub fn all_yaml() -> String {
    crds().iter().map(to_yaml).collect::<Vec<_>>().join("---\n")
}

/// The `openAPIV3Schema` of a kind.
pub fn schema(kind: &str) -> Option<&'static Value> {
    static SCHEMAS: OnceLock<Vec<(String, Value)>> = OnceLock::new();
    SCHEMAS
        .get_or_init(|| {
            crds()
                .into_iter()
                .map(|crd| {
                    let schema = crd.spec.versions[0]
                        .schema
                        .as_ref()
                        .and_then(|s| s.open_api_v3_schema.as_ref())
                        .map(|s| serde_json::to_value(s).expect("schema serializes"))
                        .unwrap_or(Value::Null);
                    (crd.spec.names.kind, schema)
                })
                .collect()
        })
        .iter()
        .find(|(k, _)| k == kind)
        .map(|(_, s)| s)
}

/// Checks a document of `kind` as the API server would at apply time; each problem reads
/// `<field path>: <message>`.
pub fn check_document(kind: &str, document: &Value) -> Vec<String> {
    let Some(schema) = schema(kind) else {
        return vec![format!("no schema for kind {kind}")];
    };
    let structural = structural_problems(kind, document);
    if !structural.is_empty() {
        // CEL rules assume a well-formed object; report the shape first.
        return structural;
    }
    match kube_cel::Validator::new().validate(schema, document, None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|e| {
                if e.field_path.is_empty() {
                    e.message
                } else {
                    format!("{}: {}", e.field_path, e.message)
                }
            })
            .collect(),
    }
}

fn structural_problems(kind: &str, document: &Value) -> Vec<String> {
    static VALIDATORS: OnceLock<Vec<(String, jsonschema::Validator)>> = OnceLock::new();
    let validators = VALIDATORS.get_or_init(|| {
        ["InputBot", "Pipeline", "ActionBinding"]
            .into_iter()
            .filter_map(|k| {
                let strict = strict_schema(self::schema(k)?.clone());
                let validator = jsonschema::options()
                    .with_draft(jsonschema::Draft::Draft4)
                    .build(&strict)
                    .expect("the generated CRD schema is valid JSON Schema");
                Some((k.to_owned(), validator))
            })
            .collect()
    });
    let Some((_, validator)) = validators.iter().find(|(k, _)| k == kind) else {
        return vec![format!("no schema for kind {kind}")];
    };
    let mut problems: Vec<String> = validator
        .iter_errors(document)
        .map(|e| {
            let path = dotted_path(e.instance_path().as_str());
            let message = e.to_string();
            if path.is_empty() {
                message
            } else {
                format!("{path}: {message}")
            }
        })
        .collect();
    problems.dedup();
    problems
}

/// The CRD schema as strict JSON Schema: objects with declared properties reject unknown
/// fields, `nullable` admits null, and Kubernetes' extensions are left aside.
fn strict_schema(mut schema: Value) -> Value {
    fn walk(v: &mut Value, root: bool) {
        let Value::Object(map) = v else { return };
        let preserve = map
            .get("x-kubernetes-preserve-unknown-fields")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if map.contains_key("properties") && !preserve && !map.contains_key("additionalProperties")
        {
            map.insert("additionalProperties".into(), Value::Bool(false));
        }
        if map.get("nullable").and_then(Value::as_bool) == Some(true)
            && let Some(Value::String(t)) = map.get("type").cloned()
        {
            map.insert("type".into(), serde_json::json!([t, "null"]));
        }
        if root {
            // apiVersion, kind and metadata are checked by the loader and the API server.
            if let Some(Value::Object(props)) = map.get_mut("properties") {
                props.insert("metadata".into(), serde_json::json!({"type": "object"}));
                props.insert("apiVersion".into(), serde_json::json!({"type": "string"}));
                props.insert("kind".into(), serde_json::json!({"type": "string"}));
            }
        }
        for (key, child) in map.iter_mut() {
            match key.as_str() {
                "properties" => {
                    if let Value::Object(props) = child {
                        props.values_mut().for_each(|p| walk(p, false));
                    }
                }
                "items" | "additionalProperties" => walk(child, false),
                "allOf" | "anyOf" | "oneOf" => {
                    if let Value::Array(items) = child {
                        items.iter_mut().for_each(|p| walk(p, false));
                    }
                }
                _ => {}
            }
        }
    }
    walk(&mut schema, true);
    schema
}

/// `/spec/sources/0/name` → `spec.sources[0].name`.
fn dotted_path(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.chars().all(|c| c.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment);
        }
    }
    out
}

/// The API reference in Markdown, generated from the schemas (what `kubectl explain` shows):
/// one table per kind with every field path, its type, bounds and description.
pub fn reference_markdown() -> String {
    let mut out = String::from(
        "# API reference (`inputbot.dev/v1alpha1`)\n\n\
         Generated from the CRD schemas by `cargo run -p inputbot-operator -- api-docs`; do not edit.\n\
         The same text is served by `kubectl explain <kind>.<field>`.\n",
    );
    for crd in crds() {
        let kind = &crd.spec.names.kind;
        let Some(schema) = schema(kind) else { continue };
        out.push_str(&format!("\n## {kind}\n\n"));
        if let Some(d) = schema.get("description").and_then(Value::as_str) {
            out.push_str(&format!("{}\n\n", d.replace('\n', " ")));
        }
        let short = crd
            .spec
            .names
            .short_names
            .clone()
            .unwrap_or_default()
            .join(", ");
        out.push_str(&format!(
            "`kubectl get {}` (short names: {short}; category `inputbot-all`)\n\n| field | type | description |\n|---|---|---|\n",
            crd.spec.names.plural
        ));
        for key in ["spec", "status"] {
            if let Some(s) = schema.pointer(&format!("/properties/{key}")) {
                fields(key, s, &mut out);
            }
        }
    }
    out
}

fn fields(path: &str, schema: &Value, out: &mut String) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, prop) in props {
        let p = format!("{path}.{name}");
        // Kubernetes' own types are documented upstream.
        let upstream = name == "resources" || name == "conditions";
        let mut ty = type_of(prop);
        if required.contains(&name.as_str()) {
            ty.push_str(", required");
        }
        let mut description = prop
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
            .replace('\n', " ")
            .replace('|', "\\|");
        let bounds = bounds(prop);
        if !bounds.is_empty() {
            description.push_str(&format!(" _({bounds})_"));
        }
        out.push_str(&format!("| `{p}` | {ty} | {description} |\n"));
        if upstream {
            continue;
        }
        fields(&p, prop, out);
        if let Some(items) = prop.get("items") {
            fields(&format!("{p}[]"), items, out);
        }
        if let Some(values) = prop.get("additionalProperties").filter(|v| v.is_object()) {
            fields(&format!("{p}.<name>"), values, out);
        }
    }
}

fn type_of(prop: &Value) -> String {
    if prop.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return "any JSON".into();
    }
    match prop.get("type").and_then(Value::as_str) {
        Some("array") => format!(
            "list of {}",
            prop.get("items")
                .map(type_of)
                .unwrap_or_else(|| "values".into())
        ),
        Some("object")
            if prop
                .get("additionalProperties")
                .is_some_and(Value::is_object) =>
        {
            format!("map of {}", type_of(&prop["additionalProperties"]))
        }
        Some(t) => {
            if let Some(e) = prop.get("enum").and_then(Value::as_array) {
                let values: Vec<String> = e
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|v| format!("`{v}`"))
                    .collect();
                format!("{t}: {}", values.join(" \\| "))
            } else {
                t.to_owned()
            }
        }
        None => "value".into(),
    }
}

fn bounds(prop: &Value) -> String {
    let mut b = Vec::new();
    for (key, label) in [
        ("minimum", "min"),
        ("maximum", "max"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
    ] {
        if let Some(v) = prop.get(key) {
            b.push(format!(
                "{label} {}",
                v.as_f64().map_or(v.to_string(), |f| format!("{f}"))
            ));
        }
    }
    if let Some(p) = prop.get("pattern").and_then(Value::as_str) {
        b.push(format!("pattern `{}`", p.replace('|', "\\|")));
    }
    if let Some(rules) = prop
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
    {
        for r in rules {
            if let Some(m) = r.get("message").and_then(Value::as_str) {
                b.push(format!("rule: {m}"));
            }
        }
    }
    b.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_paths_read_like_kubectl_explain() {
        assert_eq!(dotted_path("/spec/sources/0/name"), "spec.sources[0].name");
        assert_eq!(dotted_path(""), "");
    }

    #[test]
    fn reflow_joins_the_lines_of_a_paragraph_and_keeps_paragraph_breaks() {
        assert_eq!(
            reflow("One\ntwo,\nthree.\n\nFour\nfive."),
            "One two, three.\n\nFour five."
        );
        assert_eq!(reflow("Single line."), "Single line.");
        assert_eq!(reflow("a\n\n\n\nb"), "a\n\nb");
    }

    #[test]
    fn reflow_keeps_list_items_and_code_on_their_own_lines() {
        assert_eq!(
            reflow("Kinds:\n- one\n  continued\n* two\n1. three\n10. four"),
            "Kinds:\n- one continued\n* two\n1. three\n10. four"
        );
        assert_eq!(
            reflow("Example:\n\n    a: 1\n      b: 2\n\nAfter\nit."),
            "Example:\n\n    a: 1\n      b: 2\n\nAfter it."
        );
        assert_eq!(
            reflow("Fenced:\n```yaml\na: 1\n\nb: 2\n```\nafter"),
            "Fenced:\n```yaml\na: 1\n\nb: 2\n```\nafter"
        );
    }

    /// Every `description` string in a schema (a property named `description` is an object).
    fn descriptions(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (key, child) in map {
                    match (key.as_str(), child) {
                        ("description", Value::String(d)) => out.push(d.clone()),
                        _ => descriptions(child, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| descriptions(i, out)),
            _ => {}
        }
    }

    #[test]
    fn no_crd_description_breaks_a_line_inside_a_paragraph() {
        let mut all = Vec::new();
        for crd in crds() {
            descriptions(&serde_json::to_value(&crd).unwrap(), &mut all);
        }
        assert!(all.len() > 100, "only {} descriptions", all.len());
        let mut broken = Vec::new();
        for d in &all {
            let lines: Vec<&str> = d.split('\n').collect();
            for pair in lines.windows(2) {
                let (line, next) = (pair[0], pair[1]);
                let paragraph_break = line.is_empty() || next.is_empty();
                let own_line = is_list_item(next) || is_indented_code(next) || is_fence(next);
                if !paragraph_break && !own_line {
                    broken.push(format!("{line:?} / {next:?} in {d:?}"));
                }
            }
        }
        assert!(broken.is_empty(), "single line breaks: {broken:#?}");
    }

    #[test]
    fn a_multi_line_doc_comment_becomes_one_line() {
        // `InputBotSpec::ingest` is documented over two `///` lines.
        let ingest = schema("InputBot")
            .unwrap()
            .pointer("/properties/spec/properties/ingest/description")
            .and_then(Value::as_str)
            .unwrap();
        assert_eq!(
            ingest,
            "How the ingest Deployment runs: replicas, autoscaling, resources, and how its \
             Service is exposed outside the cluster."
        );
    }

    #[test]
    fn every_crd_is_in_the_inputbot_all_category_with_a_status_subresource() {
        let all = crds();
        // kubectl resolves a word to a category before a kind: a category named like any
        // kind's singular, plural or short name makes `kubectl get inputbot NAME` fail.
        let names: Vec<String> = all
            .iter()
            .flat_map(|c| {
                let n = &c.spec.names;
                [n.singular.clone().unwrap_or_default(), n.plural.clone()]
                    .into_iter()
                    .chain(n.short_names.clone().unwrap_or_default())
            })
            .collect();
        for crd in all {
            assert_eq!(crd.spec.group, "inputbot.dev");
            assert_eq!(
                crd.spec.names.categories.as_deref(),
                Some(&["inputbot-all".to_owned()][..])
            );
            assert!(!names.contains(&"inputbot-all".to_owned()), "{names:?}");
            let version = &crd.spec.versions[0];
            assert_eq!(version.name, "v1alpha1");
            assert!(version.subresources.as_ref().unwrap().status.is_some());
            let columns: Vec<&str> = version
                .additional_printer_columns
                .iter()
                .flatten()
                .map(|c| c.name.as_str())
                .collect();
            assert!(
                columns.contains(&"Ready") && columns.contains(&"Age"),
                "{columns:?}"
            );
        }
    }
}
