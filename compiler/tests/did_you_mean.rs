//! Did-you-mean suggestions: the fewest edits first (a swap counts as one), ties broken by a
//! shared prefix; whole step kinds (`csv.writer` → `csv.write`) rather than their family.

use weft_compiler::builtins;
use weft_compiler::diagnostic::closest;

#[test]
fn suggests_the_closest_step_kind() {
    let names: Vec<&str> = builtins::names().collect();
    for (typo, expected) in [
        ("csv.writer", Some("csv.write")),
        ("csv.parser", Some("csv.parse")),
        ("csv.wirte", Some("csv.write")),
        ("transfrom", Some("transform")),
        ("lgo", Some("log")),
        ("http.requst", Some("http.request")),
        ("http.gets", Some("http.get")),
        ("for-each", Some("for_each")),
        ("file.mv", Some("file.move")),
        ("sql.query", None),
    ] {
        assert_eq!(closest(typo, names.iter().copied()), expected, "{typo}");
    }
}

#[test]
fn short_names_need_a_close_match() {
    assert_eq!(closest("a", ["b"]), None);
    assert_eq!(closest("ab", ["ba", "cd"]), None);
    assert_eq!(closest("regoin", ["region", "reason"]), Some("region"));
}
