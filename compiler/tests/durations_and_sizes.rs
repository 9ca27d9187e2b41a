//! Durations and sizes: the schema's duration pattern and humantime (what lowering parses
//! with) agree on every string the pattern accepts; durations that are zero or too long, and
//! body sizes that do not fit in 64 bits, are refused by the check rather than lowered to
//! something else.

use serde_json::{Value, json};
use weft_compiler::diagnostic::Code;
use weft_compiler::duration::parse_ms;
use weft_compiler::repo::Sources;
use weft_compiler::schema::{FileKind, compile_schema};

/// The `DurationText` pattern of the published integration schema, as a validator.
fn duration_validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(FileKind::Integration.published()).unwrap();
    let pattern = schema["$defs"]["DurationText"]["pattern"].clone();
    compile_schema(&json!({ "type": "string", "pattern": pattern })).unwrap()
}

/// Strings built from the pattern's grammar (numbers, units, optional spaces), with the
/// milliseconds each stands for, and strings near it.
fn candidates() -> Vec<(String, Option<u64>)> {
    let units = [
        ("ms", 1),
        ("s", 1_000),
        ("m", 60_000),
        ("h", 3_600_000),
        ("d", 86_400_000),
    ];
    let numbers = [0u64, 1, 5, 30, 90, 1000];
    let mut out = Vec::new();
    for (u1, f1) in units {
        for n1 in numbers {
            for sep in ["", " "] {
                out.push((format!("{n1}{sep}{u1}"), Some(n1 * f1)));
                out.push((format!("{n1}{sep}{u1} "), Some(n1 * f1)));
                for (u2, f2) in units {
                    for gap in ["", " "] {
                        let text = format!("{n1}{sep}{u1}{gap}7{sep}{u2}");
                        out.push((text, Some(n1 * f1 + 7 * f2)));
                    }
                }
            }
        }
    }
    for odd in [
        "",
        " ",
        "5",
        "s",
        "5 m s",
        "1.5h",
        "-1s",
        "5sec",
        "5 minutes",
        "1w",
        " 5s",
        "5S",
    ] {
        out.push((odd.to_string(), None));
    }
    out
}

#[test]
fn the_schema_and_humantime_agree() {
    let validator = duration_validator();
    let mut accepted = 0;
    for (text, expected) in candidates() {
        if !validator.is_valid(&json!(text)) {
            assert!(expected.is_none(), "the schema refuses {text:?}");
            continue;
        }
        accepted += 1;
        assert_eq!(
            parse_ms(&text),
            expected,
            "humantime reads {text:?} otherwise"
        );
    }
    assert!(accepted > 500);
}

fn compile(files: &[(&str, &str)]) -> weft_compiler::Compilation {
    let mut sources = Sources::default();
    for (path, text) in files {
        sources.add(*path, *text);
    }
    sources.sort();
    weft_compiler::compile(&sources)
}

const HELLO: &str = "weft: 1\nname: acme\nflows:\n  hello:\n    trigger: { deploy: {} }\n    steps: [{ id: say, uses: log, with: { message: hi } }]\n";
const INSTANCE: &str = "weft: 1\nintegration: acme\n";

fn codes(c: &weft_compiler::Compilation) -> Vec<(Code, String)> {
    c.diagnostics
        .iter()
        .map(|d| (d.code, d.message.clone()))
        .collect()
}

#[test]
fn a_body_limit_that_does_not_fit_is_refused() {
    for size in ["76480200929599801MB", "99999999999999999999MB"] {
        let project = format!("weft: 1\ngateway: {{ max_body: {size} }}\n");
        let c = compile(&[
            ("weft.yaml", &project),
            ("integrations/acme/integration.yaml", HELLO),
            ("instances/beta/acme.yaml", INSTANCE),
        ]);
        assert_eq!(c.diagnostics.len(), 1, "{:?}", codes(&c));
        assert_eq!(c.diagnostics[0].code, Code::InvalidValue);
        assert!(c.plans.is_empty());
    }
    let c = compile(&[
        ("weft.yaml", "weft: 1\ngateway: { max_body: 2MiB }\n"),
        ("integrations/acme/integration.yaml", HELLO),
        ("instances/beta/acme.yaml", INSTANCE),
    ]);
    assert_eq!(c.plans[0].runtime.max_body, 2 * 1024 * 1024);
}

#[test]
fn zero_and_overlong_durations_are_refused() {
    let integration = "weft: 1\nname: acme\nflows:\n  poll:\n    trigger: { poll: { every: 0s, uses: http.get, with: { url: \"https://example.com\" } } }\n    steps:\n      - { id: a, uses: log, with: { message: hi }, timeout: 0ms }\n      - { id: b, uses: log, with: { message: hi }, retry: { attempts: 3, initial: 0s, max: 99999999999999999999s } }\n  hook:\n    trigger: { webhook: { path: /x, respond: sync, timeout: 0s } }\n    steps: [{ id: r, uses: respond, with: { status: 200 } }]\n";
    let project = "weft: 1\ndefaults: { timeout: 0s, retry: { attempts: 2, initial: 0ms } }\n";
    let c = compile(&[
        ("weft.yaml", project),
        ("integrations/acme/integration.yaml", integration),
        ("instances/beta/acme.yaml", INSTANCE),
    ]);
    let found = codes(&c);
    assert!(
        found.iter().all(|(code, _)| *code == Code::InvalidValue),
        "{found:?}"
    );
    let messages: Vec<&str> = found.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(
        messages,
        [
            "`every: 0s` is zero",
            "`timeout: 0ms` is zero",
            "`initial: 0s` is zero",
            "`max: 99999999999999999999s` is too long: it does not fit in 64 bits of milliseconds",
            "`timeout: 0s` is zero",
            // weft.yaml
            "`timeout: 0s` is zero",
            "`initial: 0ms` is zero",
        ]
    );
    assert!(c.plans.is_empty());
}
