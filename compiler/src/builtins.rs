//! Built-in steps as the compiler sees them: the shared registry ([`weft_plan::Builtin`]) with
//! each input schema compiled once for validation.

use std::collections::HashMap;
use std::sync::LazyLock;

use jsonschema::Validator;
use serde_json::Value;
pub use weft_plan::Builtin;

use crate::schema::compile_schema;

/// A built-in with its input schema compiled.
pub struct CompiledBuiltin {
    pub builtin: Builtin,
    /// Schema of `with`.
    pub input: Value,
    pub validator: Validator,
}

static COMPILED: LazyLock<HashMap<Builtin, CompiledBuiltin>> = LazyLock::new(|| {
    Builtin::ALL
        .iter()
        .map(|&builtin| {
            let input = builtin.input_schema();
            let validator = compile_schema(&input).expect("built-in schemas compile");
            (
                builtin,
                CompiledBuiltin {
                    builtin,
                    input,
                    validator,
                },
            )
        })
        .collect()
});

/// The built-in called `name`, with its compiled input schema.
pub fn get(name: &str) -> Option<&'static CompiledBuiltin> {
    Builtin::from_name(name).map(|b| &COMPILED[&b])
}

/// Every built-in's name, for did-you-mean suggestions.
pub fn names() -> impl Iterator<Item = &'static str> {
    Builtin::ALL.iter().map(|b| b.name())
}

/// Names of the built-ins the compiler treats specially, for `match` on source text.
pub const BRANCH: &str = Builtin::Branch.name();
pub const FOR_EACH: &str = Builtin::ForEach.name();
pub const DISPATCH: &str = Builtin::Dispatch.name();
pub const RESPOND: &str = Builtin::Respond.name();
