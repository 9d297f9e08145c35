//! Loading and validating never panics, whatever the input: broken YAML, wrong types, unknown
//! kinds, truncated files. A deterministic mutation fuzzer runs the examples through thousands
//! of small corruptions; each must end in `Ok` or in clear errors.

use inputbot_api::{
    manifest::{self, ResourceSet},
    validate::{self, Options},
};

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const TOKENS: &[&str] = &[
    "",
    "null",
    "~",
    "0",
    "-1",
    "99999999999999999999999",
    "1.5e308",
    "true",
    "[]",
    "{}",
    "\"\"",
    "'{{'",
    "\"}}\"",
    "[1, [2, [3]]]",
    "{a: {b: {c: d}}}",
    "\"\\u0000\"",
    "&a x",
    "*a",
    "!!binary AAAA",
    "- x",
    ": :",
    "|",
    ">",
    "\t",
    "'''",
    "%YAML 1.2",
    "---",
    "...",
    "ftp://x",
    "/",
    "5xx",
    "61 * * * *",
];

fn mutate(text: &str, rng: &mut Rng) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for _ in 0..=rng.below(3) {
        if lines.is_empty() {
            break;
        }
        let i = rng.below(lines.len());
        match rng.below(7) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            2 => {
                // Replace the value after the first colon.
                if let Some(pos) = lines[i].find(':') {
                    let token = TOKENS[rng.below(TOKENS.len())];
                    lines[i] = format!("{}: {token}", &lines[i][..pos]);
                }
            }
            3 => lines[i] = format!("  {}", lines[i]),
            4 => lines[i] = lines[i].trim_start().to_owned(),
            5 => {
                let cut = rng.below(lines[i].len() + 1);
                let cut = (0..=cut)
                    .rev()
                    .find(|c| lines[i].is_char_boundary(*c))
                    .unwrap_or(0);
                lines[i].truncate(cut);
            }
            _ => {
                let j = rng.below(lines.len());
                lines.swap(i, j);
            }
        }
    }
    lines.join("\n")
}

fn check(text: &str) {
    let mut set = ResourceSet::default();
    if manifest::load_str(&mut set, "fuzz.yaml", text, "default").is_ok() {
        let _ = validate::validate(&set, Options::FILES);
        let _ = inputbot_api::resolve::resolve(&set, Options::FILES);
    }
}

#[test]
fn validate_never_panics_on_mutated_examples() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut texts: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .collect();
    texts.sort();
    assert!(!texts.is_empty());
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..1500 {
        let base = &texts[round % texts.len()];
        check(&mutate(base, &mut rng));
    }
}

#[test]
fn validate_never_panics_on_hostile_documents() {
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
                c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
                e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n";
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let inputs = [
        "",
        "---\n---\n",
        "\u{0}\u{1}\u{2}",
        "kind: InputBot\napiVersion: inputbot.dev/v1alpha1\n",
        "kind: InputBot\napiVersion: inputbot.dev/v1alpha1\nmetadata: {name: x}\nspec: 3\n",
        "kind: InputBot\napiVersion: inputbot.dev/v1alpha1\nmetadata: {name: x}\nspec: {sources: [{name: a, webhook: 7}]}\n",
        "kind: Pipeline\napiVersion: inputbot.dev/v1alpha1\nmetadata: {name: [1]}\n",
        "kind: Secret\napiVersion: v1\nmetadata: {name: s}\ndata: {a: '!!!not base64'}\n",
        "kind: [InputBot]\napiVersion: {a: b}\n",
        "? [a]\n: b\n",
        bomb,
        &deep,
    ];
    for input in inputs {
        check(input);
    }
}
