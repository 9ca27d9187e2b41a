//! How deeply JSON nests. Messages wrap a webhook's body and each step's output in an
//! envelope, and JSON is read back with a recursion limit of 128: a value nested deeper than
//! [`MAX_NESTING`] is refused where it enters (the gateway, an HTTP answer), so that every
//! stored message stays readable.

use serde_json::Value;

/// The deepest nesting weft accepts in a body or an upstream answer.
pub const MAX_NESTING: usize = 64;

/// The nesting depth of a value (a scalar is 0, `[1]` is 1), counted without recursion.
pub fn nesting(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        deepest = deepest.max(depth);
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|i| (i, depth + 1))),
            Value::Object(map) => stack.extend(map.values().map(|i| (i, depth + 1))),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_levels() {
        assert_eq!(nesting(&serde_json::json!(1)), 0);
        assert_eq!(nesting(&serde_json::json!([1, { "a": [2] }])), 3);
        let deep = (0..100).fold(serde_json::json!(0), |v, _| serde_json::json!([v]));
        assert_eq!(nesting(&deep), 100);
    }
}
